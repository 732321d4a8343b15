"""Train the same YAML with both tools in subprocesses; read back per-step losses.

Both run as their users would run them: `python -m axolotl.cli.train CONFIG` in the
axolotl venv, `python -m finetune_runtime.cli train CONFIG` in ours, each with the
case directory as working directory, so start-up is part of the wall time.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.vs_axolotl import venv

OUR_SUMMARY = "train_summary.json"


@dataclass
class Run:
    tool: str
    wall_s: float
    cpu_s: float
    peak_rss_mib: float
    losses: list[float]
    train_tokens: int | None = None
    train_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _run(
    cmd: list[str], cwd: Path, env: dict[str, str], timeout: float, log: Path
) -> tuple[float, float, float]:
    """Run to completion; wall seconds, CPU seconds and peak RSS (MiB) of this one child.

    os.wait4 reports the rusage of exactly this child (and the children it waited for),
    so the peak RSS is this run's, not the largest of every run so far.
    """
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode} (log {log}):\n{tail}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0


def thread_env(threads: int | None) -> dict[str, str]:
    """Pin the intra-op thread count of a run (both tools read OMP_NUM_THREADS)."""
    return (
        {}
        if threads is None
        else {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    )


def ours(config: Path, cwd: Path, timeout: float = 1800, threads: int | None = None) -> Run:
    root = venv.ROOT
    env = dict(os.environ) | thread_env(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(root / "runtime"), str(root / "operator")])
    cmd = ["nice", "-n", "5", sys.executable, "-m", "finetune_runtime.cli", "train"]
    cmd += ["--no-progress-server", str(config)]
    wall, cpu, rss = _run(cmd, cwd, env, timeout, cwd / "ours.log")
    summary = json.loads((cwd / _output_dir(config) / OUR_SUMMARY).read_text())
    return Run(
        "ours",
        wall,
        cpu,
        rss,
        [float(h["loss"]) for h in summary["losses"]],
        train_tokens=summary.get("tokens"),
        train_seconds=summary.get("train_seconds"),
        extra={"data": summary.get("data")},
    )


def theirs(config: Path, cwd: Path, timeout: float = 1800, threads: int | None = None) -> Run:
    cmd = ["nice", "-n", "5", str(venv.venv_dir() / "bin" / "python")]
    cmd += ["-m", "axolotl.cli.train", str(config)]
    log = cwd / "axolotl.log"
    wall, cpu, rss = _run(cmd, cwd, venv.axolotl_env(thread_env(threads)), timeout, log)
    state = _trainer_state(cwd / _output_dir(config))
    steps = [h for h in state["log_history"] if "loss" in h]
    # The last checkpoint is written before the trainer logs its runtime: read it from stdout.
    runtime = re.findall(r"'train_runtime': '?([0-9.]+)", log.read_text(errors="replace"))
    return Run(
        "axolotl",
        wall,
        cpu,
        rss,
        [float(h["loss"]) for h in steps],
        train_tokens=None,
        train_seconds=float(runtime[-1]) if runtime else None,
    )


def _output_dir(config: Path) -> str:
    import yaml

    return str(yaml.safe_load(config.read_text())["output_dir"])


def _trainer_state(output_dir: Path) -> dict[str, Any]:
    found = sorted(output_dir.glob("checkpoint-*/trainer_state.json"))
    if not found:
        raise RuntimeError(f"axolotl wrote no checkpoint-*/trainer_state.json under {output_dir}")
    return dict(json.loads(found[-1].read_text()))
