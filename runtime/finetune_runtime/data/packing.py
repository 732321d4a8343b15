"""Sample packing: several examples per row of `sequence_len` tokens.

Packed examples must not see each other. A packed row carries `position_ids`
that restart at 0 for every example and *no* `attention_mask`: transformers
(>= 4.56, checked on 5.24) then derives per-example causal masks from the
position ids for sdpa, eager and flex attention
(`masking_utils.find_packed_sequence_indices`), and flash-attention uses them
as sequence boundaries.

Padding-free: the collator concatenates a micro-batch's packed rows into one
flattened row (no padding at all), and `configure_model_for_packing` switches
sdpa/eager models to an attention that runs per example on the boundaries
(`finetune_runtime.train.attention`: FlashAttention varlen on CUDA when
flash-attn is installed, per-example sdpa elsewhere), so no FLOP is spent on
padding or across examples. Two conditions, both enforced here or by
`configure_model_for_packing`:

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
from finetune_runtime.errors import ModelError

# Attention implementations whose masks honour position-id packing.
PACKING_ATTENTION = (
    "sdpa",
    "eager",
    "flex_attention",
    "flash_attention_2",
    "flash_attention_3",
    "finetune_varlen_sdpa",
)


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


def configure_model_for_packing(model: Any, device_type: str = "cpu", varlen: bool = True) -> str:
    """Make `model` keep packed examples apart; call once before training on packed rows.

    Turns the KV cache off (see the module docstring) and refuses attention
    implementations that would ignore the packing boundaries. With `varlen`, an
    sdpa/eager model switches to the padding-free attention for `device_type`.
    Returns the attention implementation in use.
    """
    config = model.config
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl not in PACKING_ATTENTION:
        raise ModelError(
            f"sample_packing needs an attention implementation that honours packed position ids "
            f"({', '.join(PACKING_ATTENTION)}); the model uses {impl!r}. "
            "Load it with attn_implementation='sdpa' or turn sample_packing off."
        )
    config.use_cache = False
    # A sliding window (Mistral v0.1 and the like) is a mask the varlen kernel does not apply.
    windowed = getattr(config, "sliding_window", None) is not None and getattr(
        config, "use_sliding_window", True
    )
    if varlen and impl in ("sdpa", "eager") and not windowed:
        from finetune_runtime.train import attention

        attention.register()
        impl = attention.packed_attention(
            device_type, flash_installed=attention.flash_attn_available()
        )
        model.set_attn_implementation(impl)
    return str(impl)
