"""The running batch's KV cache: left-padded rows that join, leave and get trimmed.

Rows are left-padded to a common length, so every row's newest token sits in the last
column and one decode step feeds one token per row. A padded column is masked out of
attention, so a row's result does not depend on the rows beside it (up to float
rounding in the matmuls).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class UnsupportedCache(Exception):
    """The model's cache is not plain full attention (e.g. sliding window, recurrent)."""


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
    for layer in cache.layers:
        if type(layer) is not DynamicLayer:
            raise UnsupportedCache(
                f"continuous batching needs full-attention KV caches, got {type(layer).__name__}"
            )
    return list(cache.layers)  # type: ignore[arg-type]


def _kv(layer: DynamicLayer) -> tuple[torch.Tensor, torch.Tensor]:
    assert layer.keys is not None and layer.values is not None
    return layer.keys, layer.values


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    if width == 0:
        return t
    pad = t.new_zeros(*t.shape[:-2], width, t.shape[-1])
    return torch.cat([pad, t], dim=-2)


def join(
    cache: DynamicCache | None,
    mask: torch.Tensor | None,
    new_cache: DynamicCache,
    new_mask: torch.Tensor,
) -> tuple[DynamicCache, torch.Tensor]:
    """Append the rows of (new_cache, new_mask) below the running batch's rows."""
    if cache is None or mask is None:
        _layers(new_cache)
        return new_cache, new_mask
    old_len, new_len = mask.shape[1], new_mask.shape[1]
    length = max(old_len, new_len)
    data = []
    for a, b in zip(_layers(cache), _layers(new_cache), strict=True):
        (ak, av), (bk, bv) = _kv(a), _kv(b)
        keys = torch.cat([_pad_left(ak, length - old_len), _pad_left(bk, length - new_len)])
        values = torch.cat([_pad_left(av, length - old_len), _pad_left(bv, length - new_len)])
        data.append((keys, values))
    joined_mask = torch.cat(
        [
            torch.nn.functional.pad(mask, (length - old_len, 0)),
            torch.nn.functional.pad(new_mask, (length - new_len, 0)),
        ]
    )
    return DynamicCache(ddp_cache_data=data), joined_mask


def keep_rows(
    cache: DynamicCache, mask: torch.Tensor, keep: list[int]
) -> tuple[DynamicCache, torch.Tensor]:
    """Only the rows `keep`, then drop the leading columns that are padding in every row."""
    index = torch.tensor(keep, dtype=torch.long)
    mask = mask[index]
    live = mask.any(dim=0).nonzero()
    start = int(live[0]) if len(live) else mask.shape[1]
    for layer in _layers(cache):
        keys, values = _kv(layer)
        layer.keys = keys[index, :, start:, :]
        layer.values = values[index, :, start:, :]
    return cache, mask[:, start:]
