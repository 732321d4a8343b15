"""precision: auto picks bf16 where the hardware runs it natively, and bf16 trains like fp32."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from train_helpers import losses, run, tiny_config

from finetune_runtime.train.hardware import cpu_flags, decide_precision

# bf16 keeps 8 mantissa bits: per-token losses round at ~0.4%, and the token-mean
# over a batch averages that out. Stated tolerance for the step losses: 2% relative.
BF16_LOSS_RTOL = 2e-2


@pytest.mark.parametrize(
    ("device", "cuda_bf16", "flags", "expected"),
    [
        ("cuda", True, (), "bf16"),
        ("cuda", False, (), "fp16"),
        ("cpu", False, ("avx2", "amx_bf16", "amx_tile"), "bf16"),
        ("cpu", False, ("avx512f", "avx512_bf16"), "bf16"),
        ("cpu", False, ("avx512f", "avx2"), "fp32"),
        ("mps", False, (), "fp32"),
    ],
)
def test_auto_resolution(device: str, cuda_bf16: bool, flags: tuple, expected: str) -> None:
    precision, why = decide_precision("auto", device, cuda_bf16=cuda_bf16, cpu_flags=flags)
    assert precision == expected and why.startswith("auto:")
    assert decide_precision("fp32", device, cuda_bf16=True, cpu_flags=flags)[0] == "fp32"


def test_cpu_flags_parses_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(info) == {"fpu", "avx512f", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()


def test_auto_logs_its_choice_and_bf16_loss_matches_fp32(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Three steps of the same run in fp32 and in bf16: the losses agree within
    BF16_LOSS_RTOL. `auto` says what it picked and why, on any machine."""
    with caplog.at_level(logging.INFO, logger="finetune_runtime.train.backends.factory"):
        auto = run(tiny_config(tmp_path / "auto", training={"precision": "auto", "max_steps": 1}))
    assert any(r.getMessage().startswith("precision ") for r in caplog.records)
    assert auto.summary["precision"] in ("bf16", "fp32")
    full = losses(run(tiny_config(tmp_path / "fp32", training={"max_steps": 3})))
    half = losses(
        run(tiny_config(tmp_path / "bf16", training={"max_steps": 3, "precision": "bf16"}))
    )
    assert half == pytest.approx(full, rel=BF16_LOSS_RTOL)
    assert half != full  # bf16 really ran
