"""The `tracking` section: Weights & Biases, MLflow and TensorBoard.

Credentials never live here: the trackers read them from the environment.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from finetune_runtime.config.base import Axolotl, Section


class WandbSettings(Section):
    """Weights & Biases. The API key comes from WANDB_API_KEY in the environment (in a
    FineTuneJob: `env` with `valueFrom.secretKeyRef`), never from the config."""

    project: Annotated[str | None, Axolotl("wandb_project")] = Field(
        None, description="W&B project; setting it turns W&B logging on (axolotl: wandb_project)."
    )
    entity: Annotated[str | None, Axolotl("wandb_entity")] = Field(
        None, description="W&B team or user (axolotl: wandb_entity)."
    )
    name: Annotated[str | None, Axolotl("wandb_name")] = Field(
        None, description="Run display name (axolotl: wandb_name)."
    )
    mode: Annotated[Literal["online", "offline", "disabled"], Axolotl("wandb_mode")] = Field(
        "online",
        description="offline writes the run under output_dir/wandb for `wandb sync` later "
        "(axolotl: wandb_mode).",
    )


class MlflowSettings(Section):
    """MLflow. Credentials (MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_USERNAME/PASSWORD) come
    from the environment, never from the config."""

    tracking_uri: Annotated[str | None, Axolotl("mlflow_tracking_uri")] = Field(
        None,
        description="http(s):// server, file:// or local path store; setting it (or "
        "experiment_name) turns MLflow logging on (axolotl: mlflow_tracking_uri).",
    )
    experiment_name: Annotated[str | None, Axolotl("mlflow_experiment_name")] = Field(
        None, description="Experiment to log into (axolotl: mlflow_experiment_name)."
    )
    run_name: Annotated[str | None, Axolotl("mlflow_run_name")] = Field(
        None, description="Run name (axolotl: mlflow_run_name)."
    )


class TrackingSettings(Section):
    """Experiment trackers that receive loss, eval loss, perplexity, learning rate, grad norm,
    tokens/s and the config. Rank 0 logs; needs the `tracking` extra."""

    wandb: WandbSettings = Field(
        default_factory=WandbSettings,
        description="Weights & Biases; off unless project is set. The API key comes from "
        "WANDB_API_KEY in the environment.",
    )
    mlflow: MlflowSettings = Field(
        default_factory=MlflowSettings,
        description="MLflow; off unless tracking_uri or experiment_name is set. Credentials "
        "come from MLFLOW_TRACKING_* in the environment.",
    )
    tensorboard: Annotated[bool, Axolotl("use_tensorboard")] = Field(
        False,
        description="Write TensorBoard event files to output_dir/runs (axolotl: use_tensorboard).",
    )

    @property
    def enabled(self) -> list[str]:
        """The trackers this config turns on, in a fixed order."""
        on = []
        if self.wandb.project and self.wandb.mode != "disabled":
            on.append("wandb")
        if self.mlflow.tracking_uri or self.mlflow.experiment_name:
            on.append("mlflow")
        if self.tensorboard:
            on.append("tensorboard")
        return on
