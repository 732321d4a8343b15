"""The progress contract between rank 0 and the operator.

Rank 0 of a training gang serves this document as JSON at `GET /progress`
(and Prometheus metrics at `GET /metrics`) on `contract.PROGRESS_PORT`. The operator polls
it and copies it into `status.progress`. Only pydantic is needed to import this
module, so the operator can share the exact same model.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TrainingState = Literal[
    "starting", "loading", "training", "evaluating", "saving", "completed", "failed"
]


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=_camel, populate_by_name=True, extra="ignore")


class CheckpointInfo(_Camel):
    step: int
    path: str
    time: datetime


class ProgressDocument(_Camel):
    """What rank 0 knows about the run right now."""

    state: TrainingState = "starting"
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    progress: float = Field(0.0, description="Percent of total steps done, 0-100.")
    eta_seconds: float | None = None
    last_checkpoint: CheckpointInfo | None = None
    world_size: int = 1
    # Which FineTuneJob and gang attempt wrote this ($FINETUNE_JOB_NAME, $FINETUNE_ATTEMPT);
    # absent outside the operator. Lets a reader tell an old attempt's document from a new one.
    job_name: str | None = None
    attempt: int | None = None
    updated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    message: str | None = None

    def to_json_dict(self) -> dict[str, object]:
        """The wire form: camelCase keys, ISO timestamps, no nulls."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def format_eta(seconds: float | None) -> str | None:
    """Render an ETA the way `kubectl get ftj` shows it: 1h2m, 3m4s, 42s."""
    if seconds is None or seconds < 0:
        return None
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
