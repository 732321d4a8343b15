"""Batching: pad examples into tensors the model's forward() takes directly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from finetune_runtime.config import FineTuneConfig
from finetune_runtime.data.tokenize import IGNORE_INDEX

Collator = Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]


def pad_token_id(tokenizer: Any) -> int:
    """The id used for padding: pad, else EOS, else 0 (padded positions are never attended)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def make_collator(tokenizer: Any, config: FineTuneConfig) -> Collator:
    """A collate_fn for DataLoader.

    Plain rows: right-padded to the longest row in the batch, `attention_mask`
    marks real tokens. Packed rows (they carry `position_ids`): padded to
    `training.sequence_len`, with position ids restarting in the padding and no
    `attention_mask`, so transformers builds per-example causal masks from the
    position ids (see finetune_runtime.data.packing). Labels are padded with -100.
    """
    pad_id = pad_token_id(tokenizer)
    sequence_len = config.training.sequence_len

    def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not batch:
            raise ValueError("cannot collate an empty batch")
        packed = "position_ids" in batch[0]
        if any(("position_ids" in row) != packed for row in batch):
            raise ValueError("a batch mixes packed and unpacked rows")
        width = sequence_len if packed else max(len(row["input_ids"]) for row in batch)
        width = max(width, max(len(row["input_ids"]) for row in batch))
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        for r, row in enumerate(batch):
            n = len(row["input_ids"])
            input_ids[r, :n] = torch.as_tensor(row["input_ids"], dtype=torch.long)
            labels[r, :n] = torch.as_tensor(row["labels"], dtype=torch.long)
        if packed:
            position_ids = torch.zeros((len(batch), width), dtype=torch.long)
            for r, row in enumerate(batch):
                n = len(row["position_ids"])
                position_ids[r, :n] = torch.as_tensor(row["position_ids"], dtype=torch.long)
                # Padding forms its own segment (positions restart at 0), never attended
                # by real tokens; its labels are -100.
                position_ids[r, n:] = torch.arange(width - n)
            return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, row in enumerate(batch):
            attention_mask[r, : len(row["input_ids"])] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}

    return collate
