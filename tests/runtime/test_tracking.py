"""Experiment tracking with the real libraries: W&B (offline), MLflow (local file store read
back with MlflowClient) and TensorBoard (event files read back with EventAccumulator).

One real training run on the tiny Llama logs to all three at once; it is stopped halfway
by a real SIGTERM and resumed, and the resumed run must continue the same runs.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import yaml
from test_resume import stop_at
from train_helpers import losses, run, tiny_config
from wandb_records import read_run

from finetune_runtime.cli import main as cli_main
from finetune_runtime.config import parse_config
from finetune_runtime.errors import ConfigError
from finetune_runtime.progress.tracking import eval_metrics, flat_params

TRAIN_KEYS = {
    "train/loss",
    "train/learning_rate",
    "train/grad_norm",
    "train/tokens_per_second",
    "train/epoch",
}
EVAL_KEYS = {"eval/loss", "eval/perplexity"}


def tracked_config(tmp_path: Path):
    store = tmp_path / "mlruns"
    return tiny_config(
        tmp_path,
        rows=10,
        datasets=[
            {"path": str(tmp_path / "data.jsonl"), "format": "alpaca", "splits": {"validation": 2}}
        ],
        training={"max_steps": 4, "batch_size": 4, "eval_steps": 2, "save_steps": 2},
        tracking={
            "wandb": {"project": "ft-test", "entity": "team", "name": "tiny", "mode": "offline"},
            "mlflow": {
                "tracking_uri": store.as_uri(),
                "experiment_name": "tiny-exp",
                "run_name": "tiny-run",
            },
            "tensorboard": True,
        },
    )


@pytest.fixture
def wandb_home(tmp_path: Path, monkeypatch) -> None:
    """Keep W&B's own settings and caches out of the user's home directory."""
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_all_trackers_log_metrics_and_config_and_resume_into_the_same_runs(
    tmp_path: Path, monkeypatch, wandb_home
) -> None:
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tracked_config(tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr("finetune_runtime.progress.reporting.ProgressReporter.on_step", stop_at(2))
        first = run(config)
    assert first.stopped and first.step == 2
    second = run(config)
    assert second.step == 4 and second.summary["resumed_from"].endswith("checkpoint-2")
    trace = losses(second)
    out = Path(config.output_dir)

    # MLflow: one run, read back from the file store by the real client.
    client = MlflowClient(tracking_uri=config.tracking.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name("tiny-exp")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    mlrun = runs[0]
    assert mlrun.info.run_name == "tiny-run" and mlrun.info.status == "FINISHED"
    assert set(mlrun.data.metrics) >= TRAIN_KEYS | EVAL_KEYS
    history = client.get_metric_history(mlrun.info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert [m.value for m in history] == pytest.approx(trace)
    evals = client.get_metric_history(mlrun.info.run_id, "eval/perplexity")
    assert [m.step for m in evals] == [2, 4]
    assert evals[-1].value == pytest.approx(math.exp(second.summary["final_eval_loss"]))
    params = mlrun.data.params
    assert params["base_model"] == "builtin:tiny-llama"
    assert params["training.learning_rate"] == "0.01" and params["lora.r"] == "8"
    config_text = (
        Path(mlrun.info.artifact_uri.removeprefix("file://")) / "config.yaml"
    ).read_text()
    assert yaml.safe_load(config_text)["training"]["max_steps"] == 4

    # TensorBoard: event files under output_dir/runs, both halves of the run.
    events = EventAccumulator(str(out / "runs"))
    events.Reload()
    assert set(events.Tags()["scalars"]) >= TRAIN_KEYS | EVAL_KEYS
    scalars = events.Scalars("train/loss")
    assert [s.step for s in scalars] == [1, 2, 3, 4]
    assert [s.value for s in scalars] == pytest.approx(trace, rel=1e-6)
    assert [s.step for s in events.Scalars("eval/loss")] == [2, 4]
    assert "config/text_summary" in events.Tags()["tensors"]

    # W&B offline: run files written under output_dir/wandb; the resume reused the run id.
    files = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2
    halves = [read_run(f) for f in files]
    assert halves[0]["run"] == {
        "project": "ft-test",
        "entity": "team",
        "name": "tiny",
        "id": halves[0]["run"]["id"],
    }
    assert halves[1]["run"]["id"] == halves[0]["run"]["id"]
    assert halves[0]["config"]["training"]["max_steps"] == 4
    rows = [row for half in halves for row in half["history"]]
    logged = {row["_step"]: row for row in rows if "train/loss" in row}
    assert sorted(logged) == [1, 2, 3, 4]
    assert [logged[s]["train/loss"] for s in (1, 2, 3, 4)] == pytest.approx(trace)
    assert set(logged[3]) >= TRAIN_KEYS
    assert {row["_step"] for row in rows if "eval/perplexity" in row} == {2, 4}


def test_axolotl_tracker_keys_map_onto_the_schema() -> None:
    config = parse_config(
        {
            "base_model": "builtin:tiny-llama",
            "datasets": [{"path": "d.jsonl", "type": "alpaca"}],
            "micro_batch_size": 2,
            "wandb_project": "p",
            "wandb_entity": "e",
            "wandb_name": "n",
            "wandb_mode": "offline",
            "mlflow_tracking_uri": "http://mlflow:5000",
            "mlflow_experiment_name": "x",
            "use_tensorboard": True,
        }
    )
    t = config.tracking
    assert (t.wandb.project, t.wandb.entity, t.wandb.name, t.wandb.mode) == (
        "p",
        "e",
        "n",
        "offline",
    )
    assert (t.mlflow.tracking_uri, t.mlflow.experiment_name) == ("http://mlflow:5000", "x")
    assert t.enabled == ["wandb", "mlflow", "tensorboard"]
    with pytest.raises(ConfigError, match="wandb_mode"):
        parse_config(
            {
                "base_model": "b",
                "datasets": [{"path": "d", "type": "alpaca"}],
                "micro_batch_size": 1,
                "wandb_mode": "sometimes",
            }
        )


def test_a_tracker_whose_package_is_missing_fails_before_training(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """`sys.modules[name] = None` is Python's own way to make a module unimportable."""
    config = tiny_config(tmp_path, tracking={"tensorboard": True, "wandb": {"project": "p"}})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    monkeypatch.setitem(sys.modules, "wandb", None)
    assert cli_main(["train", str(path), "--no-progress-server"]) == 2
    err = capsys.readouterr().err
    assert "wandb_project" in err and "pip install 'finetune-operator[tracking]'" in err
    assert "Traceback" not in err
    assert not (Path(config.output_dir) / "runs").exists()  # nothing started


def test_eval_metrics_and_flat_params() -> None:
    assert eval_metrics(2.0) == {"eval/loss": 2.0, "eval/perplexity": pytest.approx(math.e**2)}
    assert eval_metrics(1000.0)["eval/perplexity"] == math.inf
    flat = flat_params({"a": {"b": 1, "c": [1, 2]}, "d": [{"e": "x" * 600}]})
    assert flat["a.b"] == "1" and flat["a.c"] == "[1, 2]"
    assert len(flat["d.0.e"]) == 500 and flat["d.0.e"].endswith("...")
