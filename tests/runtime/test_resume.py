"""Checkpoint/resume: exact continuation, incomplete checkpoints, SIGTERM.

Real training on the tiny Llama. The SIGTERM test runs `finetune train` as a
real subprocess, watches its real /progress endpoint and signals it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from train_helpers import free_port, losses, read_summary, run, tiny_config

from finetune_runtime.errors import CheckpointError
from finetune_runtime.train.checkpoint import COMPLETE, list_checkpoints
from finetune_runtime.train.signals import EXIT_PREEMPTED

# Dropout, warmup + cosine, accumulation and several epochs: everything resume must restore.
RESUME_SETTINGS = {
    "rows": 12,
    "lora": {"dropout": 0.1},
    "training": {
        "max_steps": None,
        "epochs": 3,
        "batch_size": 3,
        "gradient_accumulation_steps": 2,  # 4 micro-batches -> 2 steps per epoch, 6 in all
        "scheduler": "cosine",
        "warmup_steps": 2,
        "save_steps": 2,
    },
}


def adapter_weights(output_dir: str | Path) -> dict:
    return load_file(str(Path(output_dir) / "adapter" / "adapter_model.safetensors"))


def stop_at(step: int):
    """Deliver a real SIGTERM to this process once `step` is reported (handled by the loop)."""
    from finetune_runtime.progress.reporting import ProgressReporter

    original = ProgressReporter.on_step

    def on_step(self, s, **kwargs):
        original(self, s, **kwargs)
        if s == step:
            os.kill(os.getpid(), signal.SIGTERM)

    return on_step


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path: Path, monkeypatch) -> None:
    straight = tiny_config(tmp_path / "a", **RESUME_SETTINGS)
    reference = run(straight)
    assert reference.step == 6

    interrupted = tiny_config(tmp_path / "b", **RESUME_SETTINGS)
    with monkeypatch.context() as patch:
        patch.setattr("finetune_runtime.progress.reporting.ProgressReporter.on_step", stop_at(3))
        first = run(interrupted)
    assert first.stopped and first.step == 3 and first.weights_dir is None
    out = Path(interrupted.output_dir)
    assert [c.step for c in list_checkpoints(out)] == [2, 3]
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert (state["epoch"], state["batch_index"]) == (1, 2)  # mid-epoch position recorded
    assert read_summary(out)["status"] == "stopped"

    second = run(interrupted)
    assert not second.stopped and second.step == 6
    assert second.summary["resumed_from"].endswith("checkpoint-3")
    assert losses(second) == pytest.approx(losses(reference), rel=1e-6, abs=1e-7)
    a, b = adapter_weights(straight.output_dir), adapter_weights(interrupted.output_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max().item() <= 1e-6, key


def test_incomplete_and_partial_checkpoints_are_ignored(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, training={"max_steps": 4, "save_steps": 2})
    run(config)
    out = Path(config.output_dir)
    # A save that died before its COMPLETE marker, and a leftover temporary directory.
    shutil.copytree(out / "checkpoint-4", out / "checkpoint-9")
    (out / "checkpoint-9" / COMPLETE).unlink()
    shutil.copytree(out / "checkpoint-4", out / "checkpoint-10.tmp-000000123")

    assert [c.step for c in list_checkpoints(out)] == [2, 4]
    result = run(config, max_steps=6)
    assert result.summary["resumed_from"].endswith("checkpoint-4")
    assert result.step == 6
    assert not (out / "checkpoint-10.tmp-000000123").exists()  # cleaned at the first save
    assert [c.step for c in list_checkpoints(out)] == [2, 4, 6]


def test_explicit_resume_and_no_resume(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, training={"max_steps": 4, "save_steps": 2})
    run(config)
    out = Path(config.output_dir)

    explicit = tiny_config(
        tmp_path, training={"max_steps": 4, "resume_from_checkpoint": str(out / "checkpoint-2")}
    )
    again = run(explicit)
    assert again.summary["resumed_from"] == str(out / "checkpoint-2")
    assert [h["step"] for h in again.summary["losses"]] == [1, 2, 3, 4]

    fresh = run(config, resume=False)
    assert fresh.summary["resumed_from"] is None and len(fresh.summary["losses"]) == 4

    (out / "checkpoint-2" / COMPLETE).unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        run(explicit)
    missing = tiny_config(tmp_path, training={"resume_from_checkpoint": str(out / "checkpoint-77")})
    with pytest.raises(CheckpointError, match="not a directory"):
        run(missing)


def test_resuming_with_a_different_adapter_is_refused(tmp_path: Path) -> None:
    run(tiny_config(tmp_path, training={"max_steps": 2, "save_steps": 2}))
    other = tiny_config(tmp_path, lora={"target_modules": ["k_proj"]}, training={"max_steps": 3})
    # The config check names the differing keys first ...
    with pytest.raises(CheckpointError, match=r"lora\.target_modules.*--resume-with-changes"):
        run(other)
    # ... and even when told to go ahead, weights of another shape are never loaded.
    with pytest.raises(CheckpointError, match="do not match this model"):
        run(other, resume_with_changes=True)


def _progress(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/progress", timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return None


def test_sigterm_checkpoints_and_exits_143(tmp_path: Path) -> None:
    """A real `finetune train` process: SIGTERM mid-run → checkpoint, exit 143, then resume."""
    config = tiny_config(tmp_path, rows=16, training={"max_steps": 400, "batch_size": 4})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "finetune_runtime.cli", "train", str(path)]
        + ["--progress-port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        doc = None
        while time.monotonic() < deadline and proc.poll() is None:
            doc = _progress(port)
            if doc and doc.get("step", 0) >= 2:
                break
            time.sleep(0.2)
        assert doc and doc["state"] == "training" and doc["totalSteps"] == 400, doc
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == EXIT_PREEMPTED, output[-3000:]
    assert "SIGTERM received" in output
    out = Path(config.output_dir)
    (ckpt,) = list_checkpoints(out)
    assert 2 <= ckpt.step < 400
    assert read_summary(out)["status"] == "stopped"

    resumed = run(config, max_steps=ckpt.step + 1)
    assert resumed.summary["resumed_from"] == str(ckpt.path)
    assert resumed.step == ckpt.step + 1
