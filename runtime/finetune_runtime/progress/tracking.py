"""Experiment tracking: Weights & Biases, MLflow and TensorBoard, configured as in axolotl.

`tracking` in the config (axolotl: wandb_project/wandb_entity/wandb_name/wandb_mode,
mlflow_tracking_uri/mlflow_experiment_name/mlflow_run_name, use_tensorboard) turns
trackers on. Rank 0 alone logs. The packages come from the `tracking` extra and are
imported only when configured; a configured tracker whose package is missing fails
before training starts. Credentials (WANDB_API_KEY, MLFLOW_TRACKING_TOKEN, ...) are
read by the tracker libraries from the environment, never from the config.

Metrics, by step: train/loss (mean since the last log), train/learning_rate,
train/grad_norm, train/tokens_per_second, train/epoch; eval/loss and eval/perplexity.
The config is logged once (W&B config, MLflow params + config.yaml, TensorBoard text).
A resumed run continues the same W&B/MLflow run (ids kept in the checkpoint).
A tracker that fails mid-run is switched off with a warning: it never stops training.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from finetune_runtime.config import FineTuneConfig
from finetune_runtime.errors import ConfigError

log = logging.getLogger(__name__)

EXTRA = "finetune-operator[tracking]"
# tracker -> (module to import, the setting that turned it on)
REQUIREMENTS = {
    "wandb": ("wandb", "tracking.wandb.project (axolotl: wandb_project)"),
    "mlflow": ("mlflow", "tracking.mlflow (axolotl: mlflow_tracking_uri/mlflow_experiment_name)"),
    "tensorboard": ("tensorboard", "tracking.tensorboard (axolotl: use_tensorboard)"),
}
TENSORBOARD_DIR = "runs"
MAX_PARAM_LENGTH = 500  # MLflow caps parameter values; long lists are cut with a marker


class Tracker(Protocol):
    name: str
    run_id: str | None

    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self, status: str) -> None: ...


# --------------------------------------------------------------------------- pure parts


def check_installed(config: FineTuneConfig) -> None:
    """Fail with the setting and the install command when a configured tracker is missing."""
    for name in config.tracking.enabled:
        module, setting = REQUIREMENTS[name]
        if not _installed(module):
            raise ConfigError(
                f"{setting} turns on {name} logging, but the {module!r} package is not "
                f"installed: pip install '{EXTRA}' (or remove the setting)"
            )


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # in sys.modules without a spec (or blocked with None)
        return sys.modules.get(module) is not None


def eval_metrics(loss: float) -> dict[str, float]:
    """eval/loss and eval/perplexity (exp of the token-mean loss; inf when it overflows)."""
    perplexity = math.exp(loss) if loss < 700 else math.inf
    return {"eval/loss": loss, "eval/perplexity": perplexity}


def flat_params(data: Any, prefix: str = "") -> dict[str, str]:
    """The config as flat `training.learning_rate`-style string parameters (MLflow)."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flat_params(value, f"{prefix}{key}."))
    elif isinstance(data, list) and any(isinstance(v, dict) for v in data):
        for i, value in enumerate(data):
            out.update(flat_params(value, f"{prefix}{i}."))
    else:
        text = str(data)
        if len(text) > MAX_PARAM_LENGTH:
            text = text[: MAX_PARAM_LENGTH - 3] + "..."
        out[prefix.rstrip(".")] = text
    return out


def is_local_store(uri: str | None) -> bool:
    return uri is not None and ("://" not in uri or uri.startswith("file:"))


# --------------------------------------------------------------------------- trackers


class WandbTracker:
    name = "wandb"

    def __init__(self, config: FineTuneConfig, output_dir: Path, resume_id: str | None) -> None:
        import wandb

        s = config.tracking.wandb
        self.run = wandb.init(
            project=s.project,
            entity=s.entity,
            name=s.name,
            mode=s.mode,
            dir=os.environ.get("WANDB_DIR") or str(output_dir),
            config=config.model_dump(mode="json"),
            id=resume_id,
            resume="allow" if resume_id else None,
            settings=wandb.Settings(console="off"),  # our own log lines stay as they are
        )
        self.run_id: str | None = self.run.id

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def close(self, status: str) -> None:
        if status == "stopped":
            self.run.mark_preempting()
        self.run.finish(exit_code=1 if status == "failed" else 0)


class MlflowTracker:
    name = "mlflow"
    STATUS = {"completed": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}

    def __init__(self, config: FineTuneConfig, output_dir: Path, resume_id: str | None) -> None:
        from mlflow import MlflowClient

        s = config.tracking.mlflow
        if is_local_store(s.tracking_uri):
            # mlflow 3 refuses file stores unless asked; configuring a path is asking.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=s.tracking_uri)
        self.run_id: str
        if resume_id is not None:
            self.run_id = resume_id
            self.client.update_run(resume_id, status="RUNNING")
            return
        name = s.experiment_name or "Default"
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment(name)
        )
        run = self.client.create_run(experiment_id, run_name=s.run_name)
        self.run_id = run.info.run_id
        self._log_config(config)

    def _log_config(self, config: FineTuneConfig) -> None:
        from mlflow.entities import Param

        params = flat_params(config.model_dump(mode="json"))
        items = [Param(k, v) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])
        self.client.log_text(self.run_id, config.to_yaml(), "config.yaml")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=self.STATUS[status])


class TensorBoardTracker:
    name = "tensorboard"
    run_id: str | None = None

    def __init__(self, config: FineTuneConfig, output_dir: Path, resume_id: str | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(output_dir / TENSORBOARD_DIR))
        if resume_id is None:
            self.writer.add_text("config", "```yaml\n" + config.to_yaml() + "```", 0)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


TRACKERS: dict[str, Any] = {
    "wandb": WandbTracker,
    "mlflow": MlflowTracker,
    "tensorboard": TensorBoardTracker,
}


# --------------------------------------------------------------------------- all of them


class Tracking:
    """The configured trackers as one; empty (and free) on other ranks or when none is set."""

    def __init__(self, trackers: list[Tracker] | None = None) -> None:
        self.trackers = list(trackers or [])

    def log(self, step: int, metrics: Mapping[str, float | None]) -> None:
        values = {k: float(v) for k, v in metrics.items() if v is not None}
        for tracker in list(self.trackers):
            try:
                tracker.log(step, values)
            except Exception as exc:  # a tracker outage must not cost the training run
                log.warning("%s logging failed, switching it off: %s", tracker.name, _brief(exc))
                self.trackers.remove(tracker)

    def run_ids(self) -> dict[str, str]:
        """Run ids to keep in checkpoints, so a resumed run continues the same runs."""
        return {t.name: t.run_id for t in self.trackers if t.run_id}

    def close(self, status: str) -> None:
        for tracker in self.trackers:
            try:
                tracker.close(status)
            except Exception as exc:
                log.warning("%s did not close cleanly: %s", tracker.name, _brief(exc))
        self.trackers = []


def _brief(exc: Exception) -> str:
    from finetune_runtime.storage.redact import redact

    return redact(" ".join(str(exc).split()))[:300]


def open_tracking(
    config: FineTuneConfig, *, is_main: bool, resume_ids: dict[str, str] | None = None
) -> Tracking:
    """Start the configured trackers (rank 0 only); a start failure is a clear error."""
    names = config.tracking.enabled
    if not names or not is_main:
        return Tracking()
    check_installed(config)
    started: list[Tracker] = []
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        try:
            started.append(TRACKERS[name](config, output_dir, (resume_ids or {}).get(name)))
        except Exception as exc:
            Tracking(started).close("failed")
            raise ConfigError(
                f"{REQUIREMENTS[name][1]}: cannot start the {name} run: {_brief(exc)}"
            ) from exc
    log.info("experiment tracking: %s", ", ".join(names))
    return Tracking(started)
