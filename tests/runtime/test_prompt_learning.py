"""peft's prompt-learning adapters (prefix tuning, prompt tuning, P-tuning) on the tiny Llama.

Real training: each adapter trains, checkpoints, resumes exactly like an uninterrupted
run, loads back for generation, and `finetune merge` refuses it with a message that
points at serving the adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from test_resume import adapter_weights, stop_at
from train_helpers import losses, run, tiny_config

from finetune_runtime.cli import main as cli_main
from finetune_runtime.config import PROMPT_LEARNING_ADAPTERS, parse_config
from finetune_runtime.errors import ConfigError, ModelError
from finetune_runtime.model.generate import find_weights, generate, load_for_generation
from finetune_runtime.model.merge import merge
from finetune_runtime.train.checkpoint import list_checkpoints

PEFT_TYPES = {
    "prefix_tuning": "PREFIX_TUNING",
    "prompt_tuning": "PROMPT_TUNING",
    "p_tuning": "P_TUNING",
}

# 12 rows, micro-batches of 3, accumulation 2: 2 steps per epoch, 4 in all, a save every 2.
SETTINGS = {
    "rows": 12,
    "lora": {"num_virtual_tokens": 6},
    "training": {
        "max_steps": None,
        "epochs": 2,
        "batch_size": 3,
        "gradient_accumulation_steps": 2,
        "learning_rate": 0.05,
        "scheduler": "cosine",
        "warmup_steps": 1,
        "save_steps": 2,
    },
}


@pytest.mark.parametrize("adapter", PROMPT_LEARNING_ADAPTERS)
def test_trains_checkpoints_resumes_exactly_and_generates(
    tmp_path: Path, monkeypatch, adapter: str
) -> None:
    straight = tiny_config(tmp_path / "a", adapter=adapter, **SETTINGS)
    reference = run(straight)
    trace = losses(reference)
    assert len(trace) == 4  # the loss falling is checked in test_adapters (same batch each step)
    saved = json.loads((Path(straight.output_dir) / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == PEFT_TYPES[adapter] and saved["num_virtual_tokens"] == 6

    interrupted = tiny_config(tmp_path / "b", adapter=adapter, **SETTINGS)
    with monkeypatch.context() as patch:
        patch.setattr("finetune_runtime.progress.reporting.ProgressReporter.on_step", stop_at(3))
        first = run(interrupted)
    assert first.stopped and first.step == 3
    assert [c.step for c in list_checkpoints(Path(interrupted.output_dir))] == [2, 3]
    second = run(interrupted)
    assert second.summary["resumed_from"].endswith("checkpoint-3") and second.step == 4
    assert losses(second) == pytest.approx(trace, rel=1e-6, abs=1e-7)
    a, b = adapter_weights(straight.output_dir), adapter_weights(interrupted.output_dir)
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]) or (a[key] - b[key]).abs().max() <= 1e-6, key

    # Served unmerged: the trained virtual tokens change what the base model predicts.
    weights = find_weights(str(straight.output_dir))
    assert weights.kind == "adapter" and weights.config is not None
    model, tokenizer = load_for_generation(weights)
    ids = torch.tensor([tokenizer("### Instruction:\nAdd the two numbers.")["input_ids"]])
    with torch.no_grad():
        tuned = model(input_ids=ids).logits[0, -1]
        with model.disable_adapter():
            base = model(input_ids=ids).logits[0, -1]
    assert not torch.allclose(tuned, base, atol=1e-4)
    text = generate(model, tokenizer, ids[0].tolist(), max_new_tokens=6)
    assert text == generate(model, tokenizer, ids[0].tolist(), max_new_tokens=6)  # greedy

    with pytest.raises(ModelError, match="cannot be folded into the base model.*finetune serve"):
        merge(straight)


def test_merge_command_refuses_with_exit_4(tmp_path: Path, capsys) -> None:
    config = tiny_config(tmp_path, adapter="prompt_tuning", training={"max_steps": 1})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert cli_main(["merge", str(path)]) == 4
    err = capsys.readouterr().err
    assert "prompt_tuning" in err and "serve the adapter" in err and "Traceback" not in err


def test_a_prompt_learning_adapter_dir_is_refused_even_under_a_lora_config(tmp_path: Path) -> None:
    """`--adapter` pointing at a prefix-tuning adapter while the config says lora."""
    trained = tiny_config(tmp_path / "p", adapter="prefix_tuning", training={"max_steps": 1})
    run(trained)
    lora = tiny_config(tmp_path / "l")
    with pytest.raises(ModelError, match="prefix_tuning"):
        merge(lora, adapter=Path(trained.output_dir) / "adapter")


def test_packing_is_refused_with_the_field_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="training.sample_packing.*virtual tokens"):
        parse_config(
            {
                "base_model": "builtin:tiny-llama",
                "adapter": "p_tuning",
                "datasets": [{"path": "x.jsonl"}],
                "training": {"sample_packing": True},
            }
        )
