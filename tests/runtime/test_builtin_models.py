"""The locally built models: the mid-size one others benchmark against has the agreed shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune_runtime.errors import ModelError
from finetune_runtime.model.tiny import resolve_builtin


def test_mid_llama_has_the_agreed_shape_and_runs(finetune_cache: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_builtin("builtin:mid-llama")
    config = json.loads((path / "config.json").read_text())
    assert {
        k: config[k]
        for k in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
            "vocab_size",
            "max_position_embeddings",
            "tie_word_embeddings",
        )
    } == {
        "hidden_size": 512,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "intermediate_size": 1408,
        "vocab_size": 32000,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
    }
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert len(tokenizer) <= 32000  # every id the tokenizer makes has an embedding row
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = tokenizer("Give three tips for staying healthy.", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 32000)
    # Building is deterministic: a second resolve returns the cached directory.
    assert resolve_builtin("builtin:mid-llama") == path


def test_unknown_builtin_names_the_known_ones(finetune_cache: Path) -> None:
    with pytest.raises(ModelError, match="builtin:mid-llama"):
        resolve_builtin("builtin:huge-llama")
