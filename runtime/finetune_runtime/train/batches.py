"""What the loop feeds the model: per-rank, resumable micro-batches and token counts.

Data order depends on (seed, epoch, position) alone, so a resumed run reads exactly
the batches the uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from finetune_runtime.data.tokenize import IGNORE_INDEX
from finetune_runtime.train.backends.base import Backend
from finetune_runtime.train.plan import TrainingPlan

Batch = dict[str, torch.Tensor]


def seeded_sampler(dataset: Dataset, backend: Backend, seed: int, shuffle: bool) -> Any:
    """Per-rank shard of the data, reshuffled per epoch from (seed, epoch) alone, so a
    resumed run reads exactly the batches the uninterrupted run would have."""
    return DistributedSampler(
        dataset,
        num_replicas=backend.world_size,
        rank=backend.rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=False,
    )


def epoch_batches(
    dataset: Dataset, sampler: Any, batch_size: int, epoch: int, skip: int, collate: Any
) -> Iterator[Batch]:
    """Micro-batches of `epoch`, starting after the first `skip` of them."""
    sampler.set_epoch(epoch)
    indices = list(BatchSampler(sampler, batch_size, drop_last=False))[skip:]
    return iter(
        DataLoader(dataset, batch_sampler=indices, collate_fn=collate, generator=private_rng())
    )


def private_rng() -> torch.Generator:
    """DataLoader draws a base seed when iterated; from the global generator that would shift
    dropout streams whenever an iterator starts (epochs, evals, resumes). Give it its own."""
    return torch.Generator().manual_seed(0)


class TrainBatches:
    """The micro-batches of each step's accumulation window; the loader restarts at
    each new epoch (and, after a resume, mid-epoch where the plan says)."""

    def __init__(self, dataset: Dataset, sampler: Any, batch_size: int, collate: Any) -> None:
        self.dataset = dataset
        self.sampler = sampler
        self.batch_size = batch_size
        self.collate = collate
        self._batches: Iterator[Batch] | None = None
        self._epoch = -1

    def window(self, plan: TrainingPlan, completed_steps: int) -> list[Batch]:
        """The micro-batches of the step after `completed_steps`."""
        pos = plan.position(completed_steps)
        if self._batches is None or pos.epoch != self._epoch:
            self._batches = epoch_batches(
                self.dataset,
                self.sampler,
                self.batch_size,
                pos.epoch,
                pos.batch_index,
                self.collate,
            )
            self._epoch = pos.epoch
        return [next(self._batches) for _ in range(plan.window_size(completed_steps))]


class EvalShard(Dataset):
    """This rank's share of the eval set, padded to equal length across ranks (so
    collective forwards line up) with padding rows contributing no loss."""

    def __init__(self, dataset: Dataset, rank: int, world_size: int) -> None:
        n = len(dataset)  # type: ignore[arg-type]
        per_rank = -(-n // world_size)
        self.dataset = dataset
        self.items = [(i % n, i >= n) for i in range(rank, per_rank * world_size, world_size)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        source, is_padding = self.items[index]
        example = self.dataset[source]
        if is_padding:
            example = dict(example, labels=[IGNORE_INDEX] * len(example["labels"]))
        return example


def loss_tokens(batch: Batch) -> int:
    """Tokens that carry a loss once labels are shifted (as causal LM losses do)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def batch_tokens(batch: Batch) -> int:
    """Tokens the model processed (real tokens; packed rows count their full width)."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
