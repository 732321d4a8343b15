"""The run's own counters (`RunState`) and resuming them, with weights, optimizer and
RNG streams, from a checkpoint.

A resumed run continues exactly like the uninterrupted one: the backend restores the
training state, each rank its RNG streams, and the data position follows from the
step (see `train.plan` and `train.batches`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from finetune_runtime.config import FineTuneConfig
from finetune_runtime.train import guards
from finetune_runtime.train.backends.base import Backend
from finetune_runtime.train.checkpoint import agreed_resume, load_rng
from finetune_runtime.train.options import TrainOptions
from finetune_runtime.train.plan import TrainingPlan

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """What the loop counts; saved in every checkpoint as the backend's `client_state`."""

    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per step
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0
    train_seconds: float = 0.0
    resumed_from: str | None = None
    tracking_ids: dict[str, str] = field(default_factory=dict)  # run ids of resumed trackers

    def client_state(
        self, plan: TrainingPlan, world_size: int, tracking_ids: dict[str, str]
    ) -> dict[str, Any]:
        pos = plan.position(self.step)
        return {
            "step": self.step,
            "epoch": pos.epoch,
            "batch_index": pos.batch_index,
            "epoch_progress": plan.epoch_progress(self.step),
            "total_steps": plan.total_steps,
            "micro_batches_per_epoch": plan.micro_batches_per_epoch,
            "world_size": world_size,
            "tokens": self.tokens,
            "train_seconds": self.train_seconds,
            "history": self.history,
            "eval_history": self.eval_history,
            "tracking": tracking_ids,
        }

    @classmethod
    def from_client_state(cls, state: dict[str, Any], path: Path) -> RunState:
        return cls(
            step=int(state["step"]),
            history=list(state.get("history", [])),
            eval_history=list(state.get("eval_history", [])),
            tokens=int(state.get("tokens", 0)),
            train_seconds=float(state.get("train_seconds", 0.0)),
            resumed_from=str(path),
            tracking_ids=dict(state.get("tracking", {})),
        )


def resume(
    config: FineTuneConfig, backend: Backend, options: TrainOptions, plan: TrainingPlan
) -> RunState:
    """Restore the checkpoint the options and config ask for (collective), or start
    afresh; either way seed this rank's RNG streams for what follows."""
    training = config.training
    auto = training.auto_resume if options.resume is None else options.resume
    explicit = None
    if options.resume is not False:
        explicit = options.resume_from or training.resume_from_checkpoint
    path = agreed_resume(backend, Path(config.output_dir), explicit, auto)
    if path is None:
        # Different dropout streams per rank; the same on every run with this seed.
        torch.manual_seed(config.seed + backend.rank)
        return RunState()
    guards.check_resume_config(path, config, options.resume_with_changes)
    saved = backend.load(path)
    _warn_if_data_order_differs(path, saved, plan, backend.world_size)
    state = RunState.from_client_state(saved, path)
    if not load_rng(path, backend.rank):
        torch.manual_seed(config.seed + backend.rank + state.step)
    if backend.is_main:
        pos = plan.position(state.step)
        log.info(
            "resumed from %s: step %d, epoch %d, batch %d",
            path,
            state.step,
            pos.epoch,
            pos.batch_index,
        )
    return state


def _warn_if_data_order_differs(
    path: Path, saved: dict[str, Any], plan: TrainingPlan, world_size: int
) -> None:
    if (
        saved.get("micro_batches_per_epoch") != plan.micro_batches_per_epoch
        or saved.get("world_size") != world_size
    ):
        log.warning(
            "%s was written with %s micro-batches per epoch on %s ranks, now %d on %d: the "
            "data order after resuming differs from an uninterrupted run",
            path,
            saved.get("micro_batches_per_epoch"),
            saved.get("world_size"),
            plan.micro_batches_per_epoch,
            world_size,
        )
