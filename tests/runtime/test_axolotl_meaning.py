"""axolotl settings that change what training *is* are refused, never dropped quietly.

Found by running the example configs shipped in axolotl 0.19.0 through `finetune
validate` (docs/axolotl.md, "Config coverage"): the Tinker ones validated as a plain
full fine-tune of an 8B model, and a `split: train[:50]` slice read the whole file.
"""

from __future__ import annotations

import textwrap

import pytest

from finetune_runtime.config import parse_config, parse_config_with_warnings
from finetune_runtime.errors import ConfigError

BASE = """\
base_model: builtin:tiny-llama
micro_batch_size: 2
datasets:
  - path: data.jsonl
    type: alpaca
"""


def _problems(extra: str) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + textwrap.dedent(extra))
    return str(err.value)


def test_tinker_backend_is_refused_with_the_key_and_line() -> None:
    text = _problems(
        """\
        plugins:
          - axolotl.integrations.hatchery.HatcheryPlugin
        hatchery:
          backend: tinker
          lora_rank: 16
        """
    )
    assert ":7: plugins[0]: axolotl plugin 'axolotl.integrations.hatchery" in text
    assert ":8: hatchery: hatchery (training on a remote Tinker backend" in text


def test_kernel_only_plugins_are_accepted_with_a_warning() -> None:
    config, warnings = parse_config_with_warnings(
        BASE + "plugins:\n  - axolotl.integrations.liger.LigerPlugin\n"
    )
    assert config.training.batch_size == 2
    assert any("LigerPlugin (kernels only) is ignored" in w for w in warnings)


def test_split_slice_is_refused_and_unknown_dataset_keys_are_named() -> None:
    text = BASE.replace("    type: alpaca\n", "    type: alpaca\n    split: train[:50]\n")
    with pytest.raises(ConfigError, match=r":6: datasets\[0\]\.split: split 'train\[:50\]'"):
        parse_config(text)
    _, warnings = parse_config_with_warnings(
        BASE.replace("    type: alpaca\n", "    type: alpaca\n    split: train\n    shards: 4\n")
    )
    assert "datasets[0]: ignored axolotl keys with no effect here: shards" in warnings


def test_added_tokens_are_read_and_need_trained_embeddings_under_lora() -> None:
    """axolotl's `tokens` used to be dropped silently; now they are added, and (as axolotl
    insists) a LoRA run must train the embeddings the new tokens get."""
    lora = BASE + "adapter: lora\ntokens: ['<call>']\n"
    with pytest.raises(ConfigError, match=r":7: tokens: new tokens would keep random"):
        parse_config(lora)
    config = parse_config(lora + "lora_modules_to_save: [embed_tokens, lm_head]\n")
    assert config.added_tokens == ["<call>"]
    assert parse_config(BASE + "tokens: ['<call>']\n").adapter == "none"  # full: all trained


def test_added_tokens_tokenize_whole(tiny_model_dir) -> None:
    from finetune_runtime.model.load import load_tokenizer

    config = parse_config(BASE + "tokens: ['<call>']\n")
    tokenizer = load_tokenizer(config, str(tiny_model_dir))
    ids = tokenizer("<call>Add", add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<call>") and len(tokenizer) > 512
    plain = load_tokenizer(parse_config(BASE), str(tiny_model_dir))
    assert len(plain("<call>Add", add_special_tokens=False)["input_ids"]) > len(ids)


def test_keys_axolotl_0_19_writes_are_read_or_ignored_not_refused() -> None:
    """Found by `make compat-axolotl` on a fresh venv: the compat cases' own YAML (keys
    axolotl 0.19.0 documents) was refused as unknown keys."""
    config, warnings = parse_config_with_warnings(
        BASE + "dataset_num_proc: 1\nshuffle_merged_datasets: false\nattn_implementation: sdpa\n"
    )
    assert config.dataset_processes == 1  # axolotl's newer name for dataset_processes
    ignored = [w for w in warnings if w.startswith("ignored axolotl keys")]
    assert ignored == [
        "ignored axolotl keys with no effect here: attn_implementation, shuffle_merged_datasets"
    ]
