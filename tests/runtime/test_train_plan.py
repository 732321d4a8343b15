"""Step arithmetic of the loop (pure): steps, data positions, windows, log/eval/save points."""

from __future__ import annotations

import pytest

from finetune_runtime.config import TrainingSettings
from finetune_runtime.train.plan import Position, make_plan, per_epoch_interval


def plan(rows: int, world: int = 1, override: int | None = None, **training):
    return make_plan(
        TrainingSettings(**training), dataset_rows=rows, world_size=world, max_steps=override
    )


def test_steps_per_epoch_counts_a_short_last_window() -> None:
    p = plan(10, batch_size=2, gradient_accumulation_steps=2, epochs=1)
    assert p.micro_batches_per_epoch == 5
    assert p.steps_per_epoch == 3  # windows of 2, 2, 1 micro-batches
    assert [p.window_size(s) for s in range(3)] == [2, 2, 1]
    assert p.total_steps == 3


def test_positions_walk_epochs_and_batches() -> None:
    p = plan(10, batch_size=2, gradient_accumulation_steps=2, epochs=2)
    assert p.total_steps == 6
    assert [p.position(s) for s in range(6)] == [
        Position(0, 0),
        Position(0, 2),
        Position(0, 4),
        Position(1, 0),
        Position(1, 2),
        Position(1, 4),
    ]
    assert p.epoch_progress(3) == 1.0


def test_world_size_shards_rows_with_padding() -> None:
    p = plan(9, world=2, batch_size=2)
    # ceil(9 / 2) = 5 rows per rank -> 3 micro-batches each
    assert p.micro_batches_per_epoch == 3


def test_fractional_epochs_round_up_and_max_steps_wins() -> None:
    assert plan(8, batch_size=1, epochs=1.5).total_steps == 12
    assert plan(8, batch_size=1, epochs=3, max_steps=5).total_steps == 5
    # The CLI override wins over the config's max_steps.
    assert plan(8, override=4, batch_size=1, max_steps=9).total_steps == 4


def test_warmup_ratio_and_steps() -> None:
    assert plan(100, batch_size=1, warmup_ratio=0.1).warmup_steps == 10
    assert plan(100, batch_size=1, warmup_steps=7).warmup_steps == 7
    assert plan(4, batch_size=1, warmup_steps=50).warmup_steps == 4  # capped at total


def test_save_and_eval_points() -> None:
    p = plan(40, batch_size=2, epochs=1, saves_per_epoch=4, eval_steps=5, logging_steps=3)
    assert p.steps_per_epoch == 20
    assert [s for s in range(1, 21) if p.should_save(s)] == [5, 10, 15, 20]
    assert [s for s in range(1, 21) if p.should_eval(s)] == [5, 10, 15, 20]
    # First step, every third, and the last are logged.
    assert [s for s in range(1, 21) if p.should_log(s)] == [1, 3, 6, 9, 12, 15, 18, 20]
    assert not plan(4).should_save(1)


@pytest.mark.parametrize(("steps", "times", "expected"), [(10, 3, 3), (2, 5, 1), (7, None, None)])
def test_per_epoch_interval(steps: int, times: int | None, expected: int | None) -> None:
    assert per_epoch_interval(steps, times) == expected
