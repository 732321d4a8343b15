"""The training loop end to end on the tiny Llama (real torch on CPU, a few steps each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from train_helpers import TEST_DATA, losses, read_summary, run, tiny_config

from finetune_runtime.errors import ModelError
from finetune_runtime.progress.reporting import ProgressReporter
from finetune_runtime.train.backends.base import BackendOptions
from finetune_runtime.train.backends.local import LocalBackend
from finetune_runtime.train.checkpoint import COMPLETE, list_checkpoints
from finetune_runtime.train.loop import Trainer, TrainOptions


def test_lora_run_writes_adapter_checkpoints_and_summary(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, training={"save_steps": 2, "save_total_limit": 2})
    result = run(config)

    assert not result.stopped and result.step == 6 == result.total_steps
    trace = losses(result)
    assert len(trace) == 6 and trace[-1] < trace[0]

    out = Path(config.output_dir)
    adapter = out / "adapter"
    assert result.weights_dir == adapter
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert weights and all("lora_" in k for k in weights)
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 8
    assert (adapter / "tokenizer.json").is_file()

    # Saved at 2, 4, 6; save_total_limit keeps the newest two, all complete, nothing partial.
    assert [c.step for c in list_checkpoints(out)] == [4, 6]
    assert not [p for p in out.iterdir() if ".tmp-" in p.name or p.name.startswith(".")]
    ckpt = out / "checkpoint-6"
    assert json.loads((ckpt / COMPLETE).read_text()) == {"step": 6}
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["epoch"] == 6 and state["batch_index"] == 0
    assert (ckpt / "adapter" / "adapter_model.safetensors").is_file()
    assert "base_model: builtin:tiny-llama" in (ckpt / "config.yaml").read_text()

    summary = read_summary(out)
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert summary["first_loss"] == trace[0] and summary["last_loss"] == trace[-1]
    assert summary["tokens"] > 0 and summary["tokens_per_second"] > 0
    assert summary["trainable_parameters"] < summary["total_parameters"]


@pytest.mark.parametrize(
    ("name", "dataset"),
    [
        ("alpaca", {"path": str(TEST_DATA / "alpaca.jsonl"), "format": "alpaca"}),
        ("sharegpt", {"path": str(TEST_DATA / "sharegpt.json"), "format": "sharegpt"}),
        ("messages", {"path": str(TEST_DATA / "messages.jsonl"), "format": "sharegpt"}),
        ("completion", {"path": str(TEST_DATA / "completion.jsonl"), "format": "completion"}),
        (
            "custom",
            {
                "path": str(TEST_DATA / "custom.jsonl"),
                "format": "custom",
                "field_instruction": "question",
                "field_input": "context",
                "field_output": "answer",
                "prompt_format": "Q: {instruction}\nContext: {input}\nA: ",
                "no_input_format": "Q: {instruction}\nA: ",
            },
        ),
    ],
)
def test_each_dataset_format_trains(tmp_path: Path, name: str, dataset: dict) -> None:
    config = tiny_config(tmp_path, datasets=[dataset], training={"max_steps": 4})
    trace = losses(run(config))
    assert len(trace) == 4 and trace[-1] < trace[0], trace


def test_sample_packing_eval_and_gradient_checkpointing(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path,
        rows=24,
        datasets=[{"path": str(tmp_path / "data.jsonl"), "splits": {"validation": 4}}],
        training={
            "sample_packing": True,
            "gradient_checkpointing": True,
            "batch_size": 2,
            "eval_steps": 2,
            "max_steps": 4,
        },
    )
    result = run(config)
    evals = result.summary["eval_losses"]
    assert [e["step"] for e in evals] == [2, 4]
    assert all(e["eval_loss"] > 0 for e in evals)
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert result.summary["data"]["packing_efficiency"] > 0.5
    assert result.sample is not None and result.sample.prompt_ids and result.sample.reference_ids


def test_accumulation_and_epochs_drive_the_step_count(tmp_path: Path) -> None:
    # 8 rows, micro-batch 3 -> 3 micro-batches per epoch; accumulation 2 -> 2 steps per epoch.
    config = tiny_config(
        tmp_path,
        training={
            "max_steps": None,
            "epochs": 2,
            "batch_size": 3,
            "gradient_accumulation_steps": 2,
        },
    )
    result = run(config)
    assert result.step == result.total_steps == 4
    assert result.summary["epochs"] == 2.0


def test_reporter_follows_the_run(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, training={"max_steps": 3, "save_steps": 3})
    options = TrainOptions(serve_progress=False, progress_bar=False)
    trainer = Trainer(config, LocalBackend(BackendOptions()), options)
    assert isinstance(trainer.reporter, ProgressReporter)
    trainer.run()
    doc = trainer.reporter.document()
    assert doc.state == "completed"
    assert doc.step == doc.total_steps == 3 and doc.progress == 100.0
    assert doc.loss is not None and doc.tokens_per_second and doc.tokens_per_second > 0
    assert doc.last_checkpoint is not None and doc.last_checkpoint.step == 3


def test_max_steps_option_overrides_the_config(tmp_path: Path) -> None:
    result = run(tiny_config(tmp_path), max_steps=2)
    assert result.step == result.total_steps == 2


def test_unknown_hub_model_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    # huggingface_hub reads the variable at import: set both, so no network retries happen.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    config = tiny_config(tmp_path, base_model="some-org/some-model-that-is-not-here")
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE.*builtin:tiny-llama"):
        run(config)


def test_missing_local_model_dir_is_a_clear_error(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, base_model=str(tmp_path / "nope"))
    with pytest.raises(ModelError, match="directory not found"):
        run(config)
    (tmp_path / "empty").mkdir()
    config = tiny_config(tmp_path, base_model=str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="no config.json"):
        run(config)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cpu(tmp_path: Path, precision: str) -> None:
    """Frozen base weights in half precision, adapter weights fp32, autocast forward;
    fp16 adds a GradScaler (torch's CPU one here, CUDA's on a GPU)."""
    import torch

    from finetune_runtime.train.backends.factory import create_backend

    config = tiny_config(tmp_path, training={"precision": precision})
    backend = create_backend(config)
    trainer = Trainer(config, backend, TrainOptions(serve_progress=False, progress_bar=False))
    result = trainer.run()
    model = backend.unwrap()
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trained = {p.dtype for p in model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16 if precision == "bf16" else torch.float16}
    assert trained == {torch.float32}
    assert (backend.scaler is not None) == (precision == "fp16")
    trace = losses(result)
    assert trace[-1] < trace[0]


def test_log_lines_and_progress_bar(capsys) -> None:
    from finetune_runtime.progress.console import StepDisplay, format_metrics

    line = format_metrics(
        {"step": "3/10", "epoch": 0.25, "loss": 2.5, "lr": 0.0002, "grad_norm": None, "x": 7}
    )
    assert line == "step=3/10 epoch=0.25 loss=2.5000 lr=2.000e-04 x=7"
    display = StepDisplay(10, 0, enabled=True, bar=True)
    display.advance(3, 2.5)
    display.line("hello from the loop")
    display.close()
    err = capsys.readouterr().err
    assert "hello from the loop" in err and "3/10" in err
    silent = StepDisplay(10, 0, enabled=False, bar=True)
    silent.line("never shown")
    silent.close()
    assert "never shown" not in capsys.readouterr().err


def test_base_model_from_s3(
    tmp_path: Path, tiny_model_dir: Path, s3_server, s3_client, s3_bucket, monkeypatch
) -> None:
    """base_model: s3://… is fetched (moto over HTTP, real boto3) into the cache and trained."""
    for f in sorted(tiny_model_dir.iterdir()):
        s3_client.upload_file(str(f), s3_bucket, f"models/tiny/{f.name}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    config = tiny_config(tmp_path, base_model=f"s3://{s3_bucket}/models/tiny/")
    trace = losses(run(config, max_steps=2))
    assert len(trace) == 2
    from finetune_runtime.model.load import resolve_model_source

    local = Path(resolve_model_source(config.base_model))
    assert (local / "config.json").is_file() and local != tiny_model_dir
