"""One optimizer step's forward/backward, and evaluation, against the `Backend` seam."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from finetune_runtime.train.backends.base import Backend
from finetune_runtime.train.batches import Batch, EvalShard, loss_tokens, private_rng, to_device


def accumulate_window(model: Any, backend: Backend, window: list[Batch]) -> float:
    """Forward/backward every micro-batch of one optimizer step; return this rank's
    share of the step loss (the all-rank sum is the step's token-mean loss).

    Each micro-batch's summed token loss is divided by the loss tokens of the
    whole window on all ranks, so accumulation and data parallelism give the
    gradient of one big batch, whatever the padding.
    """
    local = sum(loss_tokens(b) for b in window)
    global_tokens = max(1, int(backend.all_reduce_sum(local)))
    total = torch.zeros((), dtype=torch.float64)
    for i, batch in enumerate(window):
        batch = to_device(batch, backend.device)
        with backend.accumulate(boundary=i == len(window) - 1):
            with backend.autocast():
                out = model(**batch, num_items_in_batch=global_tokens)
            backend.backward(out.loss)
        total += out.loss.detach().to("cpu", torch.float64)
        # Free the logits (batch x seq x vocab) now, not after the next micro-batch's forward.
        del out, batch
    return float(total)


@torch.no_grad()
def evaluate(
    model: Any, backend: Backend, dataset: Dataset, batch_size: int, collate: Any
) -> float:
    """Token-mean loss over the whole eval set (all ranks)."""
    shard = EvalShard(dataset, backend.rank, backend.world_size)
    loader = DataLoader(
        shard, batch_size=batch_size, shuffle=False, collate_fn=collate, generator=private_rng()
    )
    was_training = model.training
    model.eval()
    loss_sum = 0.0
    tokens = 0
    try:
        for batch in loader:
            n = loss_tokens(batch)
            batch = to_device(batch, backend.device)
            with backend.autocast():
                # num_items_in_batch=1 turns the mean into a sum of token losses.
                out = model(**batch, num_items_in_batch=1)
            if n:
                loss_sum += float(out.loss)
            tokens += n
    finally:
        model.train(was_training)
    total_loss = backend.all_reduce_sum(loss_sum)
    total_tokens = backend.all_reduce_sum(tokens)
    return total_loss / total_tokens if total_tokens else float("nan")
