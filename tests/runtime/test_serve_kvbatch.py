"""The running batch's KV bookkeeping: rows join left-padded, leave, and padding is trimmed."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from finetune_runtime.serving import kvbatch


def cache(rows: int, length: int, fill: float, layers: int = 2) -> DynamicCache:
    kv = torch.full((rows, 2, length, 4), fill)
    return DynamicCache(ddp_cache_data=[(kv.clone(), kv.clone()) for _ in range(layers)])


def test_join_left_pads_the_shorter_side_and_masks_it() -> None:
    old, old_mask = cache(2, 5, 1.0), torch.ones(2, 5, dtype=torch.long)
    new, new_mask = cache(1, 3, 2.0), torch.ones(1, 3, dtype=torch.long)
    joined, mask = kvbatch.join(old, old_mask, new, new_mask)
    assert mask.tolist() == [[1] * 5, [1] * 5, [0, 0, 1, 1, 1]]
    for layer in joined.layers:
        assert layer.keys.shape == (3, 2, 5, 4)
        assert torch.all(layer.keys[2, :, :2] == 0) and torch.all(layer.keys[2, :, 2:] == 2.0)
        assert torch.all(layer.values[:2] == 1.0)


def test_keep_rows_drops_rows_and_trims_all_padding_columns() -> None:
    old, old_mask = cache(1, 2, 1.0), torch.ones(1, 2, dtype=torch.long)
    new, new_mask = cache(1, 6, 2.0), torch.ones(1, 6, dtype=torch.long)
    joined, mask = kvbatch.join(old, old_mask, new, new_mask)
    assert mask.shape == (2, 6)
    kept, mask = kvbatch.keep_rows(joined, mask, [0])  # the long row leaves
    assert mask.tolist() == [[1, 1]]  # four columns of pure padding are gone
    assert all(layer.keys.shape == (1, 2, 2, 4) for layer in kept.layers)
    assert all(torch.all(layer.values == 1.0) for layer in kept.layers)
