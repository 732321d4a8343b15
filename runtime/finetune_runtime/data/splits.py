"""Deterministic train/validation split of a dataset's rows."""

from __future__ import annotations

import random

from finetune_runtime.config import Splits
from finetune_runtime.errors import DatasetError


def validation_count(splits: Splits, total: int, where: str) -> int:
    """How many rows go to validation: a fraction (< 1) or a row count (>= 1)."""
    value = splits.validation
    if value <= 0:
        return 0
    count = max(1, round(value * total)) if value < 1 else int(value)
    if count >= total:
        raise DatasetError(
            f"{where}.splits.validation asks for {count} validation rows but the dataset has only "
            f"{total}: lower it so at least one row is left for training"
        )
    return count


def split_indices(total: int, count: int, seed: int, salt: int = 0) -> tuple[list[int], list[int]]:
    """(train, validation) row indices; the same seed always gives the same split.

    `salt` (the dataset's position) keeps two identical files from splitting alike.
    Both lists keep the file's order.
    """
    if count <= 0:
        return list(range(total)), []
    rng = random.Random(f"{seed}:{salt}")
    chosen = set(rng.sample(range(total), count))
    train = [i for i in range(total) if i not in chosen]
    return train, sorted(chosen)


def validation_indices(total: int, count: int, seed: int, salt: int = 0) -> set[int]:
    """Only the validation rows of `split_indices` (the same draw), for streaming."""
    if count <= 0:
        return set()
    return set(random.Random(f"{seed}:{salt}").sample(range(total), count))
