"""Varlen attention for padding-free packed batches, on any device.

A padding-free packed batch is one flattened row: examples back to back, position
ids restarting at 0 at every example, no padding and no attention mask (see
`finetune_runtime.data.packing`). transformers' own sdpa/eager paths honour it by
building a (tokens x tokens) block-diagonal mask, which makes attention cost grow
with the square of the whole micro-batch, most of it masked away. FlashAttention's
varlen kernel (CUDA, `flash_attention_2`) takes the boundaries instead.

`finetune_varlen_sdpa` is the exact kernel for everywhere else: it cuts the row at
the example boundaries and runs causal `scaled_dot_product_attention` per example,
so no FLOP is spent across examples or on padding. Registered with transformers'
`AttentionInterface` and absent from its mask registry, so models pass it no mask:
causal order inside an example is all it needs (right padding of unpacked batches
is never attended by real tokens under a causal mask either).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
import torch.nn.functional as F

from finetune_runtime.errors import ModelError

VARLEN_SDPA = "finetune_varlen_sdpa"


def segment_bounds(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of each example in one row: a new example starts where the position is 0."""
    starts = (position_ids == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    ends = [*starts[1:], int(position_ids.shape[-1])]
    return list(zip(starts, ends, strict=True))


def varlen_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention per example. query: (batch, heads, tokens, dim); key/value may
    have fewer heads (GQA). Returns (batch, tokens, heads, dim) like transformers' sdpa."""
    position_ids = kwargs.get("position_ids")
    if attention_mask is not None or position_ids is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    gqa = query.shape[1] != key.shape[1]
    if position_ids.shape[0] != query.shape[0]:
        position_ids = position_ids.expand(query.shape[0], -1)
    rows = []
    for b in range(query.shape[0]):
        parts = [
            F.scaled_dot_product_attention(
                query[b : b + 1, :, s:e],
                key[b : b + 1, :, s:e],
                value[b : b + 1, :, s:e],
                dropout_p=dropout,
                is_causal=True,
                scale=scaling,
                enable_gqa=gqa,
            )
            for s, e in segment_bounds(position_ids[b])
        ]
        rows.append(torch.cat(parts, dim=2) if len(parts) > 1 else parts[0])
    out = torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make `finetune_varlen_sdpa` a valid attn_implementation (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_forward)


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def packed_attention(device_type: str, *, flash_installed: bool) -> str:
    """The exact attention for padding-free packed rows on this device."""
    if device_type == "cuda" and flash_installed:
        return "flash_attention_2"
    return VARLEN_SDPA


# Attention implementations whose masks honour position-id packing.
PACKING_ATTENTION = (
    "sdpa",
    "eager",
    "flex_attention",
    "flash_attention_2",
    "flash_attention_3",
    "finetune_varlen_sdpa",
)


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
        register()
        impl = packed_attention(device_type, flash_installed=flash_attn_available())
        model.set_attn_implementation(impl)
    return str(impl)
