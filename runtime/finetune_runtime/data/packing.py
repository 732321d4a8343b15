"""Sample packing: several examples per row of `sequence_len` tokens.

Packed examples must not see each other. A packed row carries `position_ids`
that restart at 0 for every example and *no* `attention_mask`: transformers
(>= 4.56, checked on 5.24) then derives per-example causal masks from the
position ids for sdpa, eager and flex attention
(`masking_utils.find_packed_sequence_indices`), and flash-attention uses them
as sequence boundaries.

Padding-free: the collator concatenates a micro-batch's packed rows into one
flattened row (no padding at all), and the trainer's
`finetune_runtime.train.attention.configure_model_for_packing` switches sdpa/eager
models to an attention that runs per example on the boundaries (FlashAttention
varlen on CUDA when flash-attn is installed, per-example sdpa elsewhere), so no
FLOP is spent on padding or across examples. Two conditions, both enforced by the
collator here or by `configure_model_for_packing`:

- no 2D attention mask is passed (the collator leaves it out for packed rows);
- no KV cache is built during the forward pass: with `use_cache=True` the
  detection is skipped and examples attend across boundaries.

The first label of every packed example is masked: unpacked, label 0 is never
predicted (causal-LM loss shifts by one), packed it would be predicted from the
previous example's last token.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from finetune_runtime.data.tokenize import IGNORE_INDEX


def pack_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group example indices into bins of at most `capacity` tokens (best-fit decreasing).

    Deterministic: ties are broken by index. O(n log n) searches.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining capacity, bin id), sorted
    for i in order:
        size = lengths[i]
        if size > capacity:
            raise ValueError(f"example {i} has {size} tokens, more than the row ({capacity})")
        at = bisect.bisect_left(free, (size, -1))
        if at < len(free):
            remaining, b = free.pop(at)
            bins[b].append(i)
            remaining -= size
        else:
            b = len(bins)
            bins.append([i])
            remaining = capacity - size
        if remaining > 0:
            bisect.insort(free, (remaining, b))
    return bins


def pack_examples(examples: Sequence[dict[str, list[int]]], capacity: int) -> list[dict[str, Any]]:
    """Concatenate examples bin by bin into packed rows with restarting position ids."""
    bins = pack_bins([len(e["input_ids"]) for e in examples], capacity)
    rows: list[dict[str, Any]] = []
    for members in bins:
        input_ids: list[int] = []
        labels: list[int] = []
        position_ids: list[int] = []
        for i in members:
            ids = examples[i]["input_ids"]
            input_ids.extend(ids)
            labels.append(IGNORE_INDEX)
            labels.extend(examples[i]["labels"][1:])
            position_ids.extend(range(len(ids)))
        rows.append({"input_ids": input_ids, "labels": labels, "position_ids": position_ids})
    return rows
