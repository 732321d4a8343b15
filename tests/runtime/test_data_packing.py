"""Sample packing: bin packing, the collator, and proof on the real tiny Llama that packed
examples do not attend to each other (logits and loss equal those of separate runs)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from finetune_runtime.config import parse_config
from finetune_runtime.data import make_collator
from finetune_runtime.data.packing import pack_bins, pack_examples
from finetune_runtime.errors import ModelError
from finetune_runtime.train.attention import configure_model_for_packing


@given(st.lists(st.integers(1, 64), max_size=200), st.integers(64, 200))
@settings(max_examples=60, deadline=None)
def test_pack_bins_is_a_partition_within_capacity(lengths, capacity):
    bins = pack_bins(lengths, capacity)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= capacity for b in bins)
    # best-fit never leaves two bins that could have been merged
    loads = sorted(sum(lengths[i] for i in b) for b in bins)
    if len(loads) >= 2:
        assert loads[0] + loads[1] > capacity
    assert pack_bins(lengths, capacity) == bins  # deterministic


def test_pack_bins_rejects_oversized_examples():
    with pytest.raises(ValueError, match="more than the row"):
        pack_bins([5, 11], 10)


def test_pack_examples_restart_positions_and_mask_first_labels():
    examples = [
        {"input_ids": [1, 10, 11, 2], "labels": [-100, 10, 11, 2]},
        {"input_ids": [1, 20, 2], "labels": [1, 20, 2]},  # e.g. train_on_inputs
        {"input_ids": [1, 30, 31, 32, 33, 2], "labels": [-100, -100, 31, 32, 33, 2]},
    ]
    rows = pack_examples(examples, 10)
    assert [len(r["input_ids"]) for r in rows] == [10, 3]
    first = rows[0]
    assert first["input_ids"] == [1, 30, 31, 32, 33, 2, 1, 10, 11, 2]
    assert first["position_ids"] == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]
    assert first["labels"] == [-100, -100, 31, 32, 33, 2, -100, 10, 11, 2]
    assert rows[1]["labels"] == [-100, 20, 2]


def _config(**training: Any):
    return parse_config(
        {
            "base_model": "builtin:tiny-llama",
            "datasets": [{"path": "x.jsonl"}],
            "training": {"sequence_len": 32, **training},
        }
    )


def test_collator_pads_plain_rows_to_the_batch_max(tiny_tokenizer):
    collate = make_collator(tiny_tokenizer, _config())
    batch = collate(
        [
            {"input_ids": [1, 5, 6], "labels": [-100, 5, 6]},
            {"input_ids": [1, 7], "labels": [-100, 7]},
        ]
    )
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    pad = tiny_tokenizer.pad_token_id
    assert batch["input_ids"].tolist() == [[1, 5, 6], [1, 7, pad]]
    assert batch["labels"].tolist() == [[-100, 5, 6], [-100, 7, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_collator_flattens_packed_rows_without_padding_or_attention_mask(tiny_tokenizer):
    collate = make_collator(tiny_tokenizer, _config(sequence_len=16))
    row = {"input_ids": [1, 5, 1, 6], "labels": [-100, 5, -100, 6], "position_ids": [0, 1, 0, 1]}
    other = {"input_ids": [1, 7, 8], "labels": [-100, 7, 8], "position_ids": [0, 1, 2]}
    batch = collate([row, other])
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["input_ids"].tolist() == [[1, 5, 1, 6, 1, 7, 8]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 0, 1, 2]]
    assert batch["labels"].tolist() == [[-100, 5, -100, 6, -100, 7, 8]]
    assert all(t.dtype == torch.long for t in batch.values())
    with pytest.raises(ValueError, match="mixes packed and unpacked"):
        collate(
            [
                {"input_ids": [1], "labels": [1], "position_ids": [0]},
                {"input_ids": [1], "labels": [1]},
            ]
        )


# --------------------------------------------------------------------------- on the model


@pytest.fixture(scope="module")
def examples() -> list[dict[str, list[int]]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for n, masked in ((9, 3), (14, 5), (5, 1), (20, 8), (7, 2)):
        ids = [1] + torch.randint(10, 500, (n - 1,), generator=gen).tolist()
        out.append({"input_ids": ids, "labels": [-100] * masked + ids[masked:]})
    return out


def _load(tiny_model_dir, attn: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn)
    assert model.config._attn_implementation == attn
    return model


def _separate(model, example) -> tuple[torch.Tensor, float, int]:
    """Logits and summed token loss of one example run on its own (no padding, no packing)."""
    ids = torch.tensor([example["input_ids"]])
    labels = torch.tensor([example["labels"]])
    out = model(input_ids=ids, labels=labels, use_cache=False)
    count = int((labels[:, 1:] != -100).sum())
    return out.logits[0], out.loss.item() * count, count


@pytest.mark.parametrize("attn", ["sdpa", "eager", "varlen"])
def test_packed_rows_equal_separate_examples(tiny_model_dir, tiny_tokenizer, examples, attn):
    """A padding-free packed batch gives every example the logits (and the loss) it gets
    on its own: with transformers' block-diagonal masks (sdpa, eager) and with the
    per-example varlen kernel the trainer switches to."""
    model = _load(tiny_model_dir, "sdpa" if attn == "varlen" else attn)
    model.train()  # dropout is 0 in the tiny config; training mode is what the trainer runs
    used = configure_model_for_packing(model, "cpu", varlen=attn == "varlen")
    assert used == ("finetune_varlen_sdpa" if attn == "varlen" else attn)
    config = _config(sequence_len=32, sample_packing=True)
    rows = pack_examples(examples, 32)
    assert [len(r["input_ids"]) for r in rows] == [29, 26]  # best fit: 20+9, 14+7+5
    batch = make_collator(tiny_tokenizer, config)(rows)  # one flattened row, no padding
    assert batch["input_ids"].shape == (1, 55)
    assert not (batch["input_ids"] == tiny_tokenizer.pad_token_id).any()
    with torch.no_grad():
        packed = model(**batch)
        total_loss, total_count = 0.0, 0
        flat = [t for row in rows for t in row["input_ids"]]
        offset = 0
        for length in _segment_lengths([p for row in rows for p in row["position_ids"]]):
            example = next(e for e in examples if e["input_ids"] == flat[offset : offset + length])
            logits, loss_sum, count = _separate(model, example)
            torch.testing.assert_close(
                packed.logits[0, offset : offset + length], logits, atol=1e-5, rtol=1e-4
            )
            total_loss += loss_sum
            total_count += count
            offset += length
    assert offset == 55 and total_count > 0
    packed_count = int((batch["labels"][:, 1:] != -100).sum())
    assert packed_count == total_count  # no label predicted across an example boundary
    assert packed.loss.item() == pytest.approx(total_loss / total_count, rel=1e-5)


def test_sliding_window_models_keep_their_masked_attention(tiny_model_dir):
    model = _load(tiny_model_dir, "sdpa")
    model.config.sliding_window = 4096
    assert configure_model_for_packing(model, "cpu") == "sdpa"


def test_varlen_attention_backward_matches_separate_examples(tiny_model_dir, examples):
    """Gradients through the varlen kernel equal the sum of per-example gradients."""
    model = _load(tiny_model_dir, "sdpa")
    configure_model_for_packing(model, "cpu")
    rows = pack_examples(examples[:3], 64)
    assert len(rows) == 1
    batch = {k: torch.tensor([rows[0][k]]) for k in ("input_ids", "labels", "position_ids")}
    model(**batch, num_items_in_batch=1).loss.backward()
    packed = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    for e in examples[:3]:
        labels = [-100, *e["labels"][1:]]  # packing masks each example's first label
        out = model(
            input_ids=torch.tensor([e["input_ids"]]),
            labels=torch.tensor([labels]),
            num_items_in_batch=1,
            use_cache=False,
        )
        out.loss.backward()
    for name, grad in packed.items():
        p = dict(model.named_parameters())[name]
        torch.testing.assert_close(grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_with_the_kv_cache_on_packed_examples_leak_into_each_other(tiny_model_dir, examples):
    """Why configure_model_for_packing exists: transformers skips packed-sequence detection
    when it builds a KV cache (use_cache defaults to True in the model config)."""
    model = _load(tiny_model_dir, "sdpa")
    assert model.config.use_cache is True
    row = pack_examples(examples[:2], 32)[0]
    ids = torch.tensor([row["input_ids"]])
    positions = torch.tensor([row["position_ids"]])
    second = slice(len(examples[1]["input_ids"]), None)  # best-fit put the longer one first
    with torch.no_grad():
        alone, _, _ = _separate(model, examples[0])
        leaky = model(input_ids=ids, position_ids=positions).logits[0, second]
        configure_model_for_packing(model)
        isolated = model(input_ids=ids, position_ids=positions).logits[0, second]
    assert (leaky - alone).abs().max() > 1e-2
    torch.testing.assert_close(isolated, alone, atol=1e-5, rtol=1e-4)


def test_configure_for_packing_through_peft_and_refusing_unknown_attention(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        _load(tiny_model_dir, "sdpa"), LoraConfig(r=4, target_modules=["q_proj"])
    )
    configure_model_for_packing(model)
    assert model.base_model.model.config.use_cache is False
    model.config._attn_implementation = "paged|sdpa"
    with pytest.raises(ModelError, match="honours packed position ids"):
        configure_model_for_packing(model)


def _segment_lengths(position_ids: list[int]) -> list[int]:
    lengths: list[int] = []
    for p in position_ids:
        if p == 0:
            lengths.append(0)
        lengths[-1] += 1
    return lengths
