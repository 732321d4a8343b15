"""`finetune merge`: merged weights give the same logits as base + adapter.

Real peft merge_and_unload on adapters trained for a few steps on the tiny Llama.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from train_helpers import run, tiny_config

from finetune_runtime.cli import main as cli_main
from finetune_runtime.errors import ConfigError, ModelError
from finetune_runtime.model.merge import merge

PROBE = torch.tensor([[1, 17, 99, 230, 45, 7, 300, 12]])


def logits_of(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=PROBE).logits


def base_model(config):
    from transformers import AutoModelForCausalLM

    from finetune_runtime.model.load import resolve_model_source

    return AutoModelForCausalLM.from_pretrained(
        resolve_model_source(config.base_model), dtype=torch.float32
    )


def trained(tmp_path: Path, **update):
    update.setdefault("training", {})
    update["training"] = {"max_steps": 3, "learning_rate": 0.05, **update["training"]}
    config = tiny_config(tmp_path, **update)
    run(config)
    return config


@pytest.mark.parametrize(
    "adapter", ["lora", "dora", "loha", "lokr", "ia3", "oft", "boft", "vera", "adalora"]
)
def test_merged_logits_equal_base_plus_adapter(tmp_path: Path, adapter: str) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = trained(tmp_path, adapter=adapter, lora={"target_modules": "all-linear"})
    adapter_dir = Path(config.output_dir) / "adapter"
    with_adapter = logits_of(PeftModel.from_pretrained(base_model(config), adapter_dir))
    plain = logits_of(base_model(config))
    assert (with_adapter - plain).abs().max() > 1e-3  # the adapter really changes the model

    out = merge(config)
    assert out == Path(config.output_dir) / "merged"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in n or "base_layer" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits_of(merged), with_adapter, rtol=1e-4, atol=1e-4)


def test_qlora_adapter_merges_into_the_unquantized_base(tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = trained(tmp_path, adapter="qlora", quantization={"bits": 4})
    adapter_dir = Path(config.output_dir) / "adapter"
    expected = logits_of(PeftModel.from_pretrained(base_model(config), adapter_dir))
    out = merge(config, output=tmp_path / "merged-qlora")
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert merged.dtype == torch.float32
    assert not hasattr(merged.config, "quantization_config")
    torch.testing.assert_close(logits_of(merged), expected, rtol=1e-4, atol=1e-4)


def test_merge_cli_with_checkpoint_and_output(tmp_path: Path, capsys) -> None:
    config = trained(tmp_path, training={"save_steps": 2})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    target = tmp_path / "exported"
    code = cli_main(
        [
            "merge",
            str(path),
            "--adapter",
            str(Path(config.output_dir) / "checkpoint-2"),
            "--output",
            str(target),
            "--dtype",
            "bf16",
        ]
    )
    assert code == 0
    assert str(target) in capsys.readouterr().out
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(target).dtype == torch.bfloat16

    # Path traversal in --output is refused with the config error exit code.
    assert cli_main(["merge", str(path), "--output", "../escape"]) == 2
    assert "path traversal" in capsys.readouterr().err


def test_merge_refusals(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    with pytest.raises(ModelError, match="run `finetune train` first"):
        merge(config)
    with pytest.raises(ModelError, match="full fine-tune"):
        merge(tiny_config(tmp_path, adapter="none"))
    run(config)
    victim = tmp_path / "not-a-model"
    victim.mkdir()
    (victim / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a model directory"):
        merge(config, output=victim)
    assert (victim / "notes.txt").read_text() == "keep me"


def test_added_special_tokens_train_and_merge(tmp_path: Path) -> None:
    """special_tokens grow the vocabulary; embeddings are resized for training and for merge."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = trained(
        tmp_path,
        special_tokens={"sep_token": "<|sep|>"},
        lora={"modules_to_save": ["embed_tokens", "lm_head"]},
    )
    adapter_dir = Path(config.output_dir) / "adapter"
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    assert tokenizer.sep_token == "<|sep|>"
    base = base_model(config)
    grown = len(tokenizer)
    assert grown == base.get_input_embeddings().weight.shape[0] + 1
    base.resize_token_embeddings(grown)
    expected = logits_of(PeftModel.from_pretrained(base, adapter_dir))
    merged = AutoModelForCausalLM.from_pretrained(merge(config))
    assert merged.get_input_embeddings().weight.shape[0] == grown
    torch.testing.assert_close(logits_of(merged), expected, rtol=1e-4, atol=1e-4)

    # An unknown key is refused by the schema, before anything loads.
    with pytest.raises(ConfigError, match="special_tokens: unknown key"):
        tiny_config(tmp_path / "bad", special_tokens={"separator": "<x>"})
