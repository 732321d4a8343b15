"""Runtime integrity with real training on the tiny Llama: what can never be lost or silently
wrong (docs/reliability.md). Runs are a few steps long; failures are real (NaN from a real
learning rate, a real file-size limit, really flipped bytes)."""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from train_helpers import read_summary, run, tiny_config

from finetune_runtime import errors
from finetune_runtime.cli import main
from finetune_runtime.errors import CheckpointError, ConfigError, IntegrityError
from finetune_runtime.model.merge import merge
from finetune_runtime.storage.integrity import MANIFEST, identity_of, verify_weights
from finetune_runtime.train.checkpoint import list_checkpoints

SRC = str(Path(__file__).resolve().parents[2] / "runtime")


def flip_byte(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_corrupted_checkpoint_is_skipped_and_corrupted_adapter_refused(
    tmp_path: Path, caplog
) -> None:
    config = tiny_config(tmp_path, training={"max_steps": 4, "save_steps": 2})
    first = run(config)
    out = Path(config.output_dir)
    adapter = out / "adapter"
    # Every weights directory we write carries a manifest that verifies.
    for directory in (adapter, out / "checkpoint-2", out / "checkpoint-4"):
        assert verify_weights(directory) is not None
    identity = identity_of(adapter)
    assert identity["base_model"] == "builtin:tiny-llama"
    assert identity["base_architecture"]["hidden_size"] > 0
    assert first.summary["status"] == "completed"

    # A flipped bit in the newest checkpoint: resume says so and uses the older one.
    flip_byte(out / "checkpoint-4" / "trainable.safetensors")
    resumed = run(config, max_steps=5)
    assert resumed.summary["resumed_from"].endswith("checkpoint-2")
    assert "skipping checkpoint-4" in caplog.text and "SHA-256 differs" in caplog.text
    assert resumed.step == 5
    # Asked for by name, a corrupted checkpoint is an error, not a fallback.
    flip_byte(out / "checkpoint-5" / "adapter" / "adapter_model.safetensors")
    with pytest.raises(IntegrityError, match="checkpoint-5"):
        run(config, resume_from="checkpoint-5")

    # Merge verifies the adapter before using it.
    flip_byte(adapter / "adapter_model.safetensors")
    with pytest.raises(IntegrityError, match="adapter_model.safetensors: SHA-256 differs"):
        merge(config)


def test_merge_checks_the_base_and_refuses_merging_twice(tmp_path: Path, tiny_model_dir) -> None:
    config = tiny_config(tmp_path, training={"max_steps": 1})
    run(config)
    merged = merge(config)
    assert verify_weights(merged) is not None
    assert identity_of(merged)["merged_adapters"]

    twice = config.model_copy(update={"base_model": str(merged)})
    with pytest.raises(IntegrityError, match="already contains adapter"):
        merge(twice, output=tmp_path / "merged2")
    other = config.model_copy(update={"base_model": str(tiny_model_dir)})
    with pytest.raises(IntegrityError, match="trained on base_model 'builtin:tiny-llama'"):
        merge(other, output=tmp_path / "merged3")
    # A merged model is loaded (here: as a base to train on) only when it verifies.
    flip_byte(merged / "model.safetensors")
    with pytest.raises(IntegrityError, match="model.safetensors"):
        run(tiny_config(tmp_path / "again", base_model=str(merged), training={"max_steps": 1}))


def test_resume_with_a_changed_config_needs_consent(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, training={"max_steps": 2, "save_steps": 2})
    run(config)
    changed = tiny_config(tmp_path, seed=8, training={"max_steps": 2, "learning_rate": 0.02})
    with pytest.raises(CheckpointError) as info:
        run(changed)
    message = str(info.value)
    assert "training.learning_rate: 0.01 → 0.02" in message and "seed: 7 → 8" in message
    assert "--resume-with-changes" in message
    resumed = run(changed, resume_with_changes=True)
    assert resumed.summary["resumed_from"].endswith("checkpoint-2")


def test_divergence_stops_with_exit_8_keeps_the_last_good_checkpoint_and_publishes_nothing(
    tmp_path: Path, s3_server, s3_client, s3_bucket, monkeypatch, capsys
) -> None:
    # A full fine-tune with plain SGD at this learning rate, unclipped: the real weights
    # overflow within a few steps (NaN loss or gradients, or Inf weights, whichever first).
    settings = {
        "max_steps": 8,
        "save_steps": 1,
        "learning_rate": 1e30,
        "optimizer": "sgd",
        "max_grad_norm": None,
    }
    config = tiny_config(tmp_path, adapter="none", training=settings)
    path = tmp_path / "job.yaml"
    path.write_text(config.to_yaml())
    monkeypatch.setenv("FINETUNE_OUTPUT_ENDPOINT_URL", s3_server.endpoint_url)
    code = main(["train", str(path), "--output-uri", f"s3://{s3_bucket}/run"])
    assert code == errors.EXIT_DIVERGED
    err = capsys.readouterr().err
    assert "training diverged" in err and "at step" in err
    out = Path(config.output_dir)
    assert not (out / "model").exists() and not (out / "adapter").exists()
    assert read_summary(out)["status"] == "diverged"
    saved = list_checkpoints(out)
    assert saved, "the steps before the divergence were checkpointed"
    for ref in saved:
        verify_weights(ref.path)
        losses = [
            h["loss"] for h in json.loads((ref.path / "trainer_state.json").read_text())["history"]
        ]
        assert all(math.isfinite(x) for x in losses)
    assert s3_client.list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0


def _limit_file_size() -> None:
    """In the child: files may not grow past 5000 bytes (the 4 KiB output_dir probe and the
    lock record fit; a checkpoint's first file does not), and SIGXFSZ is ignored, so
    write(2) fails with EFBIG as it fails with ENOSPC on a full disk."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (5000, 5000))


def test_a_failing_save_is_one_error_and_leaves_nothing_torn(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, training={"max_steps": 2, "save_steps": 2})
    run(config)
    path = tmp_path / "job.yaml"
    path.write_text(config.to_yaml())
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "finetune_runtime.cli",
            "train",
            str(path),
            "--max-steps",
            "4",
            "--no-progress-server",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        preexec_fn=_limit_file_size,
        timeout=600,
    )
    assert done.returncode == errors.EXIT_CHECKPOINT, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "checkpoint-4" in error[0] and "checkpoint-2 is kept" in error[0]
    out = Path(config.output_dir)
    assert [c.step for c in list_checkpoints(out)] == [2]
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]  # nothing partial left
    verify_weights(out / "checkpoint-2")


def test_output_dir_problems_fail_before_any_compute(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    with pytest.raises(CheckpointError, match="not a directory"):
        run(tiny_config(tmp_path, output_dir=str(afile)))
    with pytest.raises(ConfigError, match="system directory"):
        run(tiny_config(tmp_path, output_dir="/proc/finetune-out"))
    foreign = tmp_path / "out" / "adapter"
    foreign.mkdir(parents=True)
    (foreign / "my-notes.txt").write_text("precious")
    with pytest.raises(CheckpointError, match="did not write"):
        run(tiny_config(tmp_path))
    assert (foreign / "my-notes.txt").read_text() == "precious"


def test_ia3_on_attention_only_trains_and_merges(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path,
        adapter="ia3",
        lora={"target_modules": ["q_proj", "v_proj"]},
        training={"max_steps": 1},
    )
    run(config)
    assert (merge(config) / "config.json").is_file()


def test_cli_paths_resume_by_name_and_perplexity(tmp_path: Path, monkeypatch, caplog) -> None:
    """output_dir is relative to the config file; --resume and --adapter take a checkpoint
    name that is looked up in output_dir, from any working directory."""
    config = tiny_config(
        tmp_path / "job",
        training={"max_steps": 2, "save_steps": 1},
        datasets=[{"path": str(tmp_path / "job" / "data.jsonl"), "splits": {"validation": 2}}],
    )
    data = yaml.safe_load(config.to_yaml())
    data["output_dir"] = "./run"
    path = tmp_path / "job" / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    caplog.set_level(logging.INFO)

    assert main(["train", str(path), "--no-progress-server"]) == 0
    out = tmp_path / "job" / "run"
    summary = read_summary(out)
    assert summary["final_eval_perplexity"] == pytest.approx(math.exp(summary["final_eval_loss"]))
    assert "eval_perplexity=" in caplog.text
    assert not (elsewhere / "run").exists()

    assert main(["train", str(path), "--resume", "checkpoint-1", "--no-progress-server"]) == 0
    assert read_summary(out)["resumed_from"] == str(out / "checkpoint-1")
    assert main(["merge", str(path), "--adapter", "checkpoint-1"]) == 0
    assert (out / "merged" / MANIFEST).is_file()
