"""Greedy sample generation: a quick look at what a fine-tuned model says."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from finetune_runtime.data.tokenize import IGNORE_INDEX


@dataclass(frozen=True)
class Sample:
    """A prompt taken from a tokenized example, and the response it was trained on."""

    prompt_ids: list[int]
    reference_ids: list[int]


def sample_from_example(example: dict[str, list[int]]) -> Sample | None:
    """Split an (unpacked) example at its first trained token: prompt | response.

    Works for every dataset format, because the data pipeline masks exactly the
    prompt (labels -100) and trains on the response.
    """
    if "position_ids" in example:
        starts = [i for i, p in enumerate(example["position_ids"]) if p == 0]
        end = starts[1] if len(starts) > 1 else len(example["input_ids"])
        example = {k: v[:end] for k, v in example.items()}
    labels = example["labels"]
    first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), None)
    if first is None or first == 0:
        return None
    reference = [t for t in labels[first:] if t != IGNORE_INDEX]
    return Sample(list(example["input_ids"][:first]), reference)


@torch.no_grad()
def generate(
    model: Any, tokenizer: Any, prompt: str | list[int], *, max_new_tokens: int = 48
) -> str:
    """Greedy continuation of `prompt` (text or token ids), decoded without special tokens."""
    if isinstance(prompt, str):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    else:
        ids = torch.tensor([prompt], dtype=torch.long)
    device = next(model.parameters()).device
    ids = ids.to(device)
    was_training = model.training
    model.eval()
    try:
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    finally:
        model.train(was_training)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
