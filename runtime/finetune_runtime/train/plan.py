"""Pure step arithmetic: how many optimizer steps, where each one reads its data,
when to log, evaluate and checkpoint. No torch, no I/O, so it is easy to test.

A step is one optimizer update: one accumulation window of up to
`gradient_accumulation_steps` micro-batches. An epoch's last window may be
shorter (its loss is normalised by the tokens it has, so nothing is lost).
Step numbers shown to users and used in checkpoint names are 1-based: after
step N, N updates have been applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from finetune_runtime.config import TrainingSettings


@dataclass(frozen=True)
class Position:
    """Where the data loader stands before a step: epoch and micro-batch index in it."""

    epoch: int
    batch_index: int


@dataclass(frozen=True)
class TrainingPlan:
    micro_batches_per_epoch: int  # per rank
    accumulation: int
    total_steps: int
    warmup_steps: int
    logging_steps: int
    save_every: int | None  # in steps
    eval_every: int | None

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.micro_batches_per_epoch / self.accumulation)

    def position(self, completed_steps: int) -> Position:
        """Where the next step (after `completed_steps`) starts reading."""
        epoch, window = divmod(completed_steps, self.steps_per_epoch)
        return Position(epoch, window * self.accumulation)

    def window_size(self, completed_steps: int) -> int:
        """Micro-batches in the window of the next step."""
        start = self.position(completed_steps).batch_index
        return min(self.accumulation, self.micro_batches_per_epoch - start)

    def epoch_progress(self, completed_steps: int) -> float:
        """Fractional epochs done after `completed_steps` steps."""
        return completed_steps / self.steps_per_epoch

    def should_log(self, step: int) -> bool:
        return step % self.logging_steps == 0 or step == self.total_steps or step == 1

    def should_save(self, step: int) -> bool:
        return bool(self.save_every) and step % self.save_every == 0  # type: ignore[operator]

    def should_eval(self, step: int) -> bool:
        return bool(self.eval_every) and step % self.eval_every == 0  # type: ignore[operator]


def per_epoch_interval(steps_per_epoch: int, times_per_epoch: int | None) -> int | None:
    """`saves_per_epoch` / `evals_per_epoch` → an interval in steps (at least 1)."""
    if not times_per_epoch:
        return None
    return max(1, math.floor(steps_per_epoch / times_per_epoch))


def make_plan(
    training: TrainingSettings,
    *,
    dataset_rows: int,
    world_size: int,
    max_steps: int | None = None,
) -> TrainingPlan:
    """The plan for `dataset_rows` training rows split over `world_size` ranks.

    Ranks see ceil(rows / world_size) rows each (the sampler pads by repeating
    rows so all ranks take the same number of steps). `max_steps` (the CLI's
    override) wins over `training.max_steps`, which wins over epochs.
    """
    if dataset_rows < 1:
        raise ValueError("no training rows")
    rows_per_rank = math.ceil(dataset_rows / world_size)
    micro = math.ceil(rows_per_rank / training.batch_size)
    accumulation = training.gradient_accumulation_steps
    steps_per_epoch = math.ceil(micro / accumulation)
    limit = max_steps or training.max_steps
    total = limit if limit else max(1, math.ceil(training.epochs * steps_per_epoch))
    warmup = training.warmup_steps or math.ceil(training.warmup_ratio * total)
    save_every = training.save_steps or per_epoch_interval(
        steps_per_epoch, training.saves_per_epoch
    )
    eval_every = training.eval_steps or per_epoch_interval(
        steps_per_epoch, training.evals_per_epoch
    )
    return TrainingPlan(
        micro_batches_per_epoch=micro,
        accumulation=accumulation,
        total_steps=total,
        warmup_steps=min(warmup, total),
        logging_steps=training.logging_steps,
        save_every=save_every,
        eval_every=eval_every,
    )
