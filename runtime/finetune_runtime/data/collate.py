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
    """A collate_fn for DataLoader: a list of examples (token/label lists) in, tensors out.

    Plain rows: right-padded to the longest row in the batch, `attention_mask`
    marks real tokens. Packed rows (they carry `position_ids`): padding-free, the
    batch's rows are concatenated into one row of shape (1, total tokens) whose
    position ids restart at every example, with no `attention_mask`, so attention
    keeps examples apart by their boundaries (see finetune_runtime.data.packing).
    Labels are padded with -100.
    """
    pad_id = pad_token_id(tokenizer)

    def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not batch:
            raise ValueError("cannot collate an empty batch")
        packed = "position_ids" in batch[0]
        if any(("position_ids" in row) != packed for row in batch):
            raise ValueError("a batch mixes packed and unpacked rows")
        if packed:
            return flatten_packed(batch)
        width = max(len(row["input_ids"]) for row in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, row in enumerate(batch):
            n = len(row["input_ids"])
            input_ids[r, :n] = torch.as_tensor(row["input_ids"], dtype=torch.long)
            labels[r, :n] = torch.as_tensor(row["labels"], dtype=torch.long)
            attention_mask[r, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}

    return collate


def flatten_packed(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Packed rows back to back in one (1, tokens) row: no padding anywhere."""

    def cat(key: str) -> torch.Tensor:
        flat = [token for row in batch for token in row[key]]
        return torch.tensor([flat], dtype=torch.long)

    return {
        "input_ids": cat("input_ids"),
        "labels": cat("labels"),
        "position_ids": cat("position_ids"),
    }
