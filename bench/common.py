"""Shared bench plumbing: machine facts, load sampling, medians, interleaving, workers.

A worker is `python -m <module> worker JSON` in a fresh process: its peak RSS is its
own (`ru_maxrss`), imports and allocator state of one variant never leak into another.
It prints one JSON object on its last stdout line.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "BENCH-RESULT "


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def loadavg() -> tuple[float, float, float]:
    return os.getloadavg()


@dataclass
class LoadLog:
    """1-minute load averages sampled around each measurement."""

    samples: list[float] = field(default_factory=list)

    def sample(self) -> float:
        value = loadavg()[0]
        self.samples.append(value)
        return value

    def summary(self) -> dict[str, float]:
        if not self.samples:
            self.sample()
        return {
            "min": min(self.samples),
            "median": statistics.median(self.samples),
            "max": max(self.samples),
        }


def median(values: Iterable[float]) -> float:
    data = [v for v in values if v is not None]
    return statistics.median(data) if data else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): an observed value, no interpolation."""
    data = sorted(values)
    if not data:
        return float("nan")
    rank = max(1, -(-len(data) * q // 100))
    return data[int(min(rank, len(data))) - 1]


def interleave(variants: Sequence[str], repeats: int) -> list[tuple[int, str]]:
    """ABC ABC ... : each round runs every variant once, the order rotated per round so
    no variant always goes first (a cold cache or a load spike cannot favour one)."""
    order: list[tuple[int, str]] = []
    for r in range(repeats):
        shift = r % len(variants)
        for name in list(variants[shift:]) + list(variants[:shift]):
            order.append((r, name))
    return order


def peak_rss_mib() -> float:
    """This process's peak resident set (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib(pid: int | None = None) -> float:
    """Current VmRSS of a process from /proc (MiB)."""
    return proc_status(pid or os.getpid())["VmRSS"] / 1024


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (KiB) of `pid` from /proc/PID/status."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def emit(result: dict[str, Any]) -> None:
    """A worker's answer: one tagged JSON line on stdout."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


class WorkerError(RuntimeError):
    pass


def run_worker(
    module: str, args: dict[str, Any], env: dict[str, str] | None = None, timeout: float = 900
) -> dict[str, Any]:
    """Run `python -m module worker ARGS_JSON` and return the JSON it emitted."""
    command = [sys.executable, "-m", module, "worker", json.dumps(args)]
    full_env = dict(os.environ)
    full_env.setdefault("PYTHONPATH", "")
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), full_env["PYTHONPATH"]) if p)
    full_env.update(env or {})
    proc = subprocess.run(
        command, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    raise WorkerError(
        f"{module} worker {args.get('variant', '')} exited {proc.returncode} without a result:\n"
        f"{proc.stderr[-3000:]}"
    )


def worker_main(argv: Sequence[str], fn: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
    """Entry point of a bench module run as `python -m module worker JSON`."""
    if len(argv) != 2 or argv[0] != "worker":
        print(f"usage: python -m {fn.__module__} worker JSON", file=sys.stderr)
        return 2
    emit(fn(json.loads(argv[1])))
    return 0


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


HEADLINE = ROOT / "bench" / "headline.json"


def merge_headline(keys: dict[str, Any], path: Path = HEADLINE) -> dict[str, Any]:
    """Add/replace `keys` in the flat headline map shared by every bench; others' keys stay."""
    current: dict[str, Any] = {}
    if path.is_file():
        current = json.loads(path.read_text(encoding="utf-8"))
    current.update(keys)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(dict(sorted(current.items())), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return current
