"""Every adapter type, full fine-tuning and bitsandbytes quantization train on CPU.

Real peft/bitsandbytes on the tiny Llama: the same 8-row batch every step, so the
loss must fall. Only the GPU is absent (bitsandbytes runs its CPU kernels).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import pytest
import torch
from train_helpers import losses, run, tiny_config

from finetune_runtime.config import AdapterType
from finetune_runtime.errors import ModelError

ADAPTER_SETTINGS = {
    "lora": {},
    "dora": {},
    "loha": {},
    "lokr": {},
    "ia3": {"training": {"learning_rate": 0.05}},  # IA3 learns only scaling vectors
    "adalora": {},
    "oft": {},
    "vera": {"training": {"learning_rate": 0.05}},  # VeRA learns only scaling vectors
    "boft": {},
    "none": {"training": {"learning_rate": 0.001}},  # full fine-tune
    # prompt learning: only a few virtual-token embeddings (or their encoder) train
    "prefix_tuning": {"lora": {"num_virtual_tokens": 8}, "training": {"learning_rate": 0.05}},
    "prompt_tuning": {"lora": {"num_virtual_tokens": 8}, "training": {"learning_rate": 0.05}},
    "p_tuning": {"lora": {"num_virtual_tokens": 8}, "training": {"learning_rate": 0.05}},
}


def test_every_schema_adapter_is_covered() -> None:
    assert set(get_args(AdapterType)) == set(ADAPTER_SETTINGS) | {"qlora"}


@pytest.mark.parametrize("adapter", sorted(ADAPTER_SETTINGS))
def test_adapter_trains_and_loss_falls(tmp_path: Path, adapter: str) -> None:
    config = tiny_config(tmp_path, adapter=adapter, **ADAPTER_SETTINGS[adapter])
    result = run(config)
    trace = losses(result)
    assert trace[-1] < trace[0], trace
    out = Path(config.output_dir)
    if adapter == "none":
        assert result.weights_dir == out / "model"
        assert (out / "model" / "model.safetensors").is_file()
        assert (out / "model" / "config.json").is_file()
        assert result.summary["trainable_parameters"] == result.summary["total_parameters"]
    else:
        assert result.weights_dir == out / "adapter"
        assert (out / "adapter" / "adapter_model.safetensors").is_file()
        assert result.summary["trainable_parameters"] < result.summary["total_parameters"]


def test_rslora_all_linear_targets_every_projection(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path, lora={"use_rslora": True, "target_modules": "all-linear", "r": 4}
    )
    result = run(config)
    trace = losses(result)
    assert trace[-1] < trace[0]
    saved = json.loads((Path(config.output_dir) / "adapter" / "adapter_config.json").read_text())
    assert saved["use_rslora"] is True
    assert {m.rsplit(".", 1)[-1] for m in saved["target_modules"]} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_qlora_4bit_trains_on_cpu(tmp_path: Path, quant_type: str) -> None:
    config = tiny_config(
        tmp_path,
        adapter="qlora",
        quantization={"bits": 4, "type": quant_type, "double_quant": True},
        lora={"target_modules": "all-linear"},
    )
    result = run(config)
    trace = losses(result)
    assert trace[-1] < trace[0], trace
    assert (Path(config.output_dir) / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("block_size", [32, 128])
def test_4bit_block_size_is_applied(tmp_path: Path, block_size: int) -> None:
    """block_size reaches every Params4bit; generation (bnb's CPU inference path) still works."""
    import bitsandbytes as bnb

    from finetune_runtime.model.load import load_base_model, resolve_model_source

    config = tiny_config(
        tmp_path,
        adapter="qlora",
        quantization={"bits": 4, "type": "nf4", "block_size": block_size, "double_quant": False},
    )
    source = resolve_model_source(config.base_model)
    model = load_base_model(config, source, device=torch.device("cpu"), precision="fp32")
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and {m.weight.quant_state.blocksize for m in layers} == {block_size}
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 20, 30, 40]])).logits
    assert torch.isfinite(logits).all()

    trace = losses(run(config))
    assert trace[-1] < trace[0]


def test_8bit_quantized_lora_trains_on_cpu(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, adapter="lora", quantization={"bits": 8})
    trace = losses(run(config))
    assert trace[-1] < trace[0], trace


def test_bad_adapter_options_name_the_field(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, lora={"options": {"no_such_option": 1}})
    with pytest.raises(ModelError, match=r"lora \(adapter 'lora'\).*no_such_option"):
        run(config)


def test_target_modules_that_match_nothing_are_a_clear_error(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, lora={"target_modules": ["not_a_module"]})
    with pytest.raises(ModelError, match="target_modules"):
        run(config)
