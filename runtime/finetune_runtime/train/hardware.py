"""What the hardware runs fast: `precision: auto` and `kernels: auto` are decided here.

Pure decisions (flags in, choice and reason out) apart from the two probes at the
bottom, so the rules are testable on any machine.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

ResolvedPrecision = Literal["fp32", "bf16", "fp16"]

# CPU flags (Linux /proc/cpuinfo names) of native bf16 matmul support: AMX tiles
# (Sapphire Rapids and later) or AVX512-BF16 (Cooper Lake, Zen 4 and later). With
# them oneDNN runs bf16 GEMMs at about twice the fp32 rate; without them bf16 is
# emulated and slower than fp32.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flag(flags: Iterable[str]) -> str | None:
    """The first native-bf16 flag among `flags`, or None."""
    have = set(flags)
    return next((f for f in CPU_BF16_FLAGS if f in have), None)


def decide_precision(
    requested: str,
    device_type: str,
    *,
    cuda_bf16: bool = False,
    cpu_flags: Iterable[str] = (),
) -> tuple[ResolvedPrecision, str]:
    """(precision, why) for `training.precision` on this device."""
    if requested not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"unknown precision {requested!r}")
    if requested != "auto":
        return requested, "set in the config"  # type: ignore[return-value]
    if device_type == "cuda":
        if cuda_bf16:
            return "bf16", "auto: this CUDA device supports bf16"
        return "fp16", "auto: this CUDA device has no bf16, using fp16 with loss scaling"
    flag = cpu_bf16_flag(cpu_flags)
    if device_type == "cpu" and flag is not None:
        return "bf16", f"auto: this CPU has native bf16 matmuls ({flag})"
    return "fp32", f"auto: no native bf16 on this {device_type} ({'/'.join(CPU_BF16_FLAGS)} absent)"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """This CPU's feature flags (Linux); empty where /proc/cpuinfo is unreadable."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cuda_supports_bf16() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
