"""The config schema: canonical and axolotl forms, every rule, every limit."""

from __future__ import annotations

import textwrap

import pytest

from finetune_runtime.config import load_config, parse_config, parse_config_with_warnings
from finetune_runtime.errors import ConfigError


def _error(text: str, source: str = "job.yaml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), source)
    return info.value


CANONICAL = """\
base_model: builtin:tiny-llama
adapter: lora
lora:
  r: 8
  alpha: 16
  dropout: 0.05
  target_modules: [q_proj, v_proj]
dataset:
  path: data/train.jsonl
  format: alpaca
  splits: {train: 0.9, validation: 0.1}
training:
  epochs: 2
  batch_size: 4
  gradient_accumulation_steps: 2
  learning_rate: 0.0003
  scheduler: linear
  warmup_steps: 5
  max_grad_norm: 0.5
  save_steps: 10
  logging_steps: 1
  gradient_checkpointing: true
output_dir: ./outputs/run1
seed: 7
"""

# Written in the style of axolotl's published examples (flat keys, nulls for defaults).
AXOLOTL_QLORA = """\
base_model: NousResearch/Llama-2-7b-hf
model_type: LlamaForCausalLM
tokenizer_type: LlamaTokenizer
load_in_8bit: false
load_in_4bit: true
strict: false
datasets:
  - path: mhenrichsen/alpaca_2k_test
    type: alpaca
dataset_prepared_path:
val_set_size: 0.05
output_dir: ./outputs/qlora-out
adapter: qlora
lora_model_dir:
sequence_len: 4096
sample_packing: true
lora_r: 32
lora_alpha: 16
lora_dropout: 0.05
lora_target_linear: true
wandb_project:
wandb_entity:
gradient_accumulation_steps: 4
micro_batch_size: 2
num_epochs: 4
optimizer: paged_adamw_32bit
lr_scheduler: cosine
learning_rate: 0.0002
train_on_inputs: false
bf16: auto
tf32: false
gradient_checkpointing: true
resume_from_checkpoint:
logging_steps: 1
flash_attention: true
warmup_steps: 10
evals_per_epoch: 4
saves_per_epoch: 1
weight_decay: 0.0
deepspeed: deepspeed_configs/zero2.json
special_tokens:
"""

AXOLOTL_CHAT = """\
base_model: Qwen/Qwen2.5-0.5B
chat_template: chatml
datasets:
  - path: data/chats.jsonl
    type: chat_template
    field_messages: messages
    message_property_mappings:
      role: role
      content: content
    roles_to_train: [assistant]
val_set_size: 0
adapter: lora
lora_r: 16
lora_alpha: 32
lora_target_modules: [q_proj, k_proj, v_proj, o_proj]
micro_batch_size: 1
num_epochs: 1
learning_rate: 1e-4
optimizer: adamw_torch_fused
lr_scheduler: constant_with_warmup
bf16: true
output_dir: ./out
plugins:
  - axolotl.integrations.liger.LigerPlugin
"""


def test_canonical_config_round_trips() -> None:
    config = parse_config(CANONICAL, "c.yaml")
    assert config.base_model == "builtin:tiny-llama"
    assert config.lora.r == 8 and config.lora.target_modules == ["q_proj", "v_proj"]
    assert config.datasets[0].splits.validation == pytest.approx(0.1)
    assert config.training.batch_size == 4 and config.training.save_steps == 10
    again = parse_config(config.to_yaml(), "roundtrip.yaml")
    assert again == config


def test_axolotl_qlora_config_maps_onto_canonical_form() -> None:
    config, warnings = parse_config_with_warnings(AXOLOTL_QLORA, "qlora.yml")
    assert config.adapter == "qlora"
    assert config.quantization is not None and config.quantization.bits == 4
    assert config.quantization.type == "nf4"
    assert config.lora.r == 32 and config.lora.alpha == 16
    assert config.lora.target_modules == "all-linear"
    assert config.training.batch_size == 2
    assert config.training.gradient_accumulation_steps == 4
    assert config.training.epochs == 4
    assert config.training.optimizer == "paged_adamw_32bit"
    assert config.training.sequence_len == 4096 and config.training.sample_packing
    assert config.training.precision == "auto"
    assert config.training.saves_per_epoch == 1
    assert config.datasets[0].format == "alpaca"
    assert config.datasets[0].splits.validation == pytest.approx(0.05)
    assert config.deepspeed == "deepspeed_configs/zero2.json"
    assert config.training.resume_from_checkpoint is None
    assert any("flash_attention" in w for w in warnings)


def test_axolotl_chat_template_dataset_becomes_sharegpt() -> None:
    config = parse_config(AXOLOTL_CHAT, "chat.yml")
    ds = config.datasets[0]
    assert ds.format == "sharegpt"
    assert ds.field_messages == "messages" and ds.role_field == "role"
    assert config.chat_template == "chatml"
    assert config.training.learning_rate == pytest.approx(1e-4)  # "1e-4" is a string in YAML 1.1
    assert config.training.scheduler == "constant_with_warmup"
    assert config.training.precision == "bf16"


def test_axolotl_custom_prompt_type() -> None:
    config = parse_config(
        """\
        base_model: x
        lora_r: 4
        datasets:
          - path: qa.jsonl
            type:
              field_instruction: question
              field_output: answer
              format: "Q: {instruction}\\nA: "
              no_input_format: "Q: {instruction}\\nA: "
        """.replace("        ", ""),
        "custom.yml",
    )
    ds = config.datasets[0]
    assert ds.format == "custom" and ds.field_instruction == "question"
    assert ds.prompt_format == "Q: {instruction}\nA: "


@pytest.mark.parametrize(
    ("text", "field", "line", "words"),
    [
        ("base_model: ''\ndatasets: [{path: a.jsonl}]\n", "base_model", 1, "empty"),
        ("base_model: m\ndatasets:\n  - format: alpaca\n", "datasets[0].path", 3, "required"),
        ("base_model: m\ndatasets:\n  - path: '  '\n", "datasets[0].path", 3, "empty"),
        ("base_model: m\ndatasets: []\n", "datasets", 2, "at least 1"),
        ("base_model: m\ndatasets: [{path: a}]\nlora:\n  r: 0\n", "lora.r", 4, "greater than 0"),
        (
            "base_model: m\nlora_r: -2\ndatasets: [{path: a, type: alpaca}]\n",
            "lora_r",
            2,
            "greater",
        ),
        ("base_model: m\ndatasets: [{path: a}]\nadapter: qlora\n", "adapter", 3, "4-bit"),
        (
            "base_model: m\nadapter: qlora\nlora_r: 8\ndatasets: [{path: a, type: alpaca}]\n",
            "adapter",
            2,
            "load_in_4bit",
        ),
        (
            "base_model: m\nadapter: none\nquantization: {bits: 4}\ndatasets: [{path: a}]\n",
            "quantization",
            3,
            "cannot be fully fine-tuned",
        ),
        (
            "base_model: m\ndatasets: [{path: a}]\nquantization: {type: nf5}\n",
            "quantization.type",
            3,
            "nf4",
        ),
        (
            "base_model: m\ndatasets: [{path: a}]\ntrainig: {}\n",
            "trainig",
            3,
            "did you mean 'training'",
        ),
        (
            "base_model: m\ndatasets: [{path: a}]\ntraining:\n  epoch: 1\n",
            "training.epoch",
            4,
            "epochs",
        ),
        (
            "base_model: m\ndatasets: [{path: a}]\noutput_dir: ../../etc\n",
            "output_dir",
            3,
            "traversal",
        ),
        ("base_model: m\ndatasets: [{path: a}]\ndeepspeed: zero9\n", "deepspeed", 3, "preset"),
        (
            "base_model: m\nlr_scheduler: wobbly\nlora_r: 4\ndatasets: [{path: a}]\n",
            "lr_scheduler",
            2,
            "cosine",
        ),
        ("base_model: m\nrl: dpo\nlora_r: 4\ndatasets: [{path: a}]\n", "rl", 2, "supervised"),
        (
            "base_model: m\nlora_r: 4\ndatasets:\n  - path: a\n    type: jeopardy\n",
            "datasets[0].type",
            5,
            "not supported",
        ),
        (
            "base_model: m\ndatasets:\n  - path: a\n    splits: {train: 0.5, validation: 0.1}\n",
            "datasets[0].splits.train",
            4,
            "adding up to 1",
        ),
        (
            "base_model: m\ndatasets: [{path: a}]\n"
            "training:\n  warmup_steps: 3\n  warmup_ratio: 0.1\n",
            "training.warmup_ratio",
            5,
            "not both",
        ),
        (
            "base_model: m\ndatasets:\n  - path: a\n    format: custom\n",
            "datasets[0].prompt_format",
            3,
            "prompt_format",
        ),
        (
            "base_model: m\nlearning_rate: fast\nlora_r: 4\ndatasets: [{path: a}]\n",
            "learning_rate",
            2,
            "number",
        ),
    ],
)
def test_invalid_configs_name_field_and_line(text: str, field: str, line: int, words: str) -> None:
    err = _error(text)
    issue = next((i for i in err.issues if i.field == field), None)
    assert issue is not None, f"no issue for {field}: {err}"
    assert issue.line == line, str(err)
    assert words in issue.message, str(err)
    assert f"job.yaml:{line}: {field}:" in str(err)


def test_all_problems_reported_at_once() -> None:
    err = _error("base_model: ''\ndatasets: [{path: a}]\nlora: {r: 0, dropout: 1.5}\n")
    fields = {i.field for i in err.issues}
    assert {"base_model", "lora.r", "lora.dropout"} <= fields
    assert "3 problems" in str(err)


def test_yaml_syntax_error_has_line() -> None:
    err = _error("base_model: x\n  datasets: [\n")
    assert "job.yaml:2:" in str(err) and "invalid YAML" in str(err)


def test_duplicate_keys_are_refused() -> None:
    err = _error("base_model: a\nbase_model: b\ndatasets: [{path: x}]\n")
    assert "duplicate key 'base_model'" in str(err) and ":2:" in str(err)


def test_alias_bomb_is_refused_quickly() -> None:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    err = _error("\n".join(lines) + "\n")
    assert "alias bomb" in str(err)


def test_recursive_alias_is_refused() -> None:
    err = _error("a: &a [*a]\n")
    assert "deeper" in str(err) or "alias" in str(err)


def test_config_size_limit(tmp_path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("base_model: x\n# " + "y" * (10 * 1024 * 1024) + "\n")
    with pytest.raises(ConfigError, match="10 MB"):
        load_config(big)


def test_mapping_input_from_the_operator() -> None:
    config = parse_config(
        {"base_model": "m", "datasets": [{"path": "a"}], "training": {"batch_size": 2}},
        "FineTuneJob default/x spec.config",
    )
    assert config.training.batch_size == 2
    with pytest.raises(ConfigError) as info:
        parse_config(
            {"base_model": "m", "datasets": [{"path": "a"}], "lora": {"r": 0}}, "spec.config"
        )
    assert "spec.config: lora.r:" in str(info.value)


def test_missing_file_and_non_mapping(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        parse_config("- a\n- b\n", "list.yaml")
    with pytest.raises(ConfigError, match="empty"):
        parse_config("", "empty.yaml")
