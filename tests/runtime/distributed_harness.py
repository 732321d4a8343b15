"""Helpers for the multi-process tests: configs, real `finetune launch` runs, summaries.

Every run is a real `finetune launch` subprocess -> torchrun -> N `finetune train`
ranks on 127.0.0.1 (gloo; DeepSpeed with its CPU accelerator). Nothing is mocked;
only the GPU is absent.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

RUN_TIMEOUT_S = 420
DATA = str(resources.files("finetune_runtime") / "data" / "alpaca_sample.jsonl")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(
    directory: Path,
    name: str,
    *,
    deepspeed: Any = None,
    max_steps: int = 8,
    save_steps: int = 4,
    adapter: str = "lora",
    **training: Any,
) -> Path:
    """A tiny-llama LoRA config: 2 x 2 micro-batches per rank per step, no dropout, fp32
    (so every backend consumes randomness identically and runs can be compared exactly;
    `auto` would pick bf16 on a CPU with AVX512-BF16/AMX, where DeepSpeed's bf16 and
    DDP's autocast round differently)."""
    directory.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "base_model": "builtin:tiny-llama",
        "adapter": adapter,
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "datasets": [{"path": DATA, "format": "alpaca"}],
        "training": {
            "max_steps": max_steps,
            "batch_size": 2,
            "gradient_accumulation_steps": 2,
            "learning_rate": 0.01,
            "scheduler": "cosine",
            "sequence_len": 256,
            "save_steps": save_steps,
            "logging_steps": 1,
            "precision": "fp32",
            **training,
        },
        "output_dir": str(directory / "out"),
        "seed": 7,
    }
    if deepspeed is not None:
        config["deepspeed"] = deepspeed
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def output_dir(config: Path) -> Path:
    return Path(yaml.safe_load(config.read_text())["output_dir"])


def base_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in list(env):
        if name.startswith("PET_") or name in (
            "MASTER_ADDR",
            "MASTER_PORT",
            "WORLD_SIZE",
            "RANK",
            "LOCAL_RANK",
            "NNODES",
            "NODE_RANK",
        ):
            del env[name]
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "0"})
    env.update(extra)
    return env


def launch_argv(config: Path, *, nproc: int = 2, port: int | None = None) -> list[str]:
    return [
        sys.executable,
        "-m",
        "finetune_runtime.cli",
        "launch",
        "--config",
        str(config),
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(port or free_port()),
        "--",
        "--no-progress-server",
    ]


@dataclass
class Run:
    returncode: int
    output: str
    seconds: float

    def check(self) -> Run:
        assert self.returncode == 0, f"exit {self.returncode}\n{self.output[-6000:]}"
        return self


def launch(config: Path, *, nproc: int = 2, env: dict[str, str] | None = None) -> Run:
    """`finetune launch` on one node with `nproc` ranks; waits for it to finish."""
    started = time.monotonic()
    proc = subprocess.run(
        launch_argv(config, nproc=nproc),
        env=env or base_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    return Run(proc.returncode, proc.stdout, time.monotonic() - started)


def summary(config: Path) -> dict[str, Any]:
    return json.loads((output_dir(config) / "train_summary.json").read_text())


def history(config: Path) -> list[dict[str, Any]]:
    return list(summary(config)["losses"])


def assert_same_history(
    got: list[dict[str, Any]], want: list[dict[str, Any]], *, tol: float = 1e-4
) -> None:
    assert [h["step"] for h in got] == [h["step"] for h in want]
    for g, w in zip(got, want, strict=True):
        assert abs(g["loss"] - w["loss"]) <= tol * max(1.0, abs(w["loss"])), (g, w)
        assert abs(g["learning_rate"] - w["learning_rate"]) <= 1e-9, (g, w)
        if w.get("grad_norm") is not None:
            assert g["grad_norm"] is not None
            assert abs(g["grad_norm"] - w["grad_norm"]) <= tol * max(1.0, w["grad_norm"]), (g, w)


def assert_loss_falls(hist: list[dict[str, Any]]) -> None:
    losses = [h["loss"] for h in hist]
    k = max(1, len(losses) // 3)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    assert last < first, f"loss did not fall: {losses}"


def adapter_weights(config: Path, sub: str = "adapter") -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(output_dir(config) / sub / "adapter_model.safetensors"))


def max_abs_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    assert set(a) == set(b)
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def forget_after(config: Path, step: int) -> None:
    """Delete every checkpoint after `step` and the final outputs, as if the run had
    died right after checkpoint-<step>."""
    import shutil

    out = output_dir(config)
    for entry in out.iterdir():
        if entry.name.startswith("checkpoint-") and int(entry.name.split("-")[1]) > step:
            shutil.rmtree(entry)
    for name in ("adapter", "model", "train_summary.json"):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def wait_for(predicate: Any, timeout: float, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited early with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def terminate(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


# --------------------------------------------------------------------------- shared reference


@dataclass
class TwoNodeRun:
    config: Path
    node0: Run
    node1: Run
    node1_waited: bool


def two_node_launch(directory: Path) -> TwoNodeRun:
    """DDP over two 'nodes' (two `finetune launch` processes, one rank each) on 127.0.0.1.

    Node 1 starts first and must sit in the wait-for-master gate until node 0's torchrun
    listens, exactly as worker pods that start before worker 0 do.
    """
    config = write_config(directory, "ddp")
    port = free_port()
    env = base_env(FINETUNE_RENDEZVOUS_TIMEOUT="300")
    logs = {rank: directory / f"node{rank}.log" for rank in (0, 1)}

    def start(rank: int) -> tuple[subprocess.Popen[str], float]:
        argv = launch_argv(config, nproc=1, port=port)
        argv[argv.index("--") : argv.index("--")] = ["--nnodes", "2", "--node-rank", str(rank)]
        with logs[rank].open("w") as sink:
            proc = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT, text=True)
        return proc, time.monotonic()

    node1, t1 = start(1)
    try:
        wait_for(lambda: "waiting for master 127.0.0.1" in logs[1].read_text(), 120, node1)
        node0, t0 = start(0)
        try:
            code0 = node0.wait(timeout=RUN_TIMEOUT_S)
            code1 = node1.wait(timeout=RUN_TIMEOUT_S)
        finally:
            terminate(node0)
    finally:
        terminate(node1)
    now = time.monotonic()
    out1 = logs[1].read_text()
    return TwoNodeRun(
        config,
        Run(code0, logs[0].read_text(), now - t0),
        Run(code1, out1, now - t1),
        node1_waited="waiting for master" in out1,
    )
