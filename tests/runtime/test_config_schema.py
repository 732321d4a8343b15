"""The schema states each fact once: every field described, axolotl names marked on the
fields they set (and the normaliser's maps read from those marks), and config-only checks
(prompt templates, special_tokens keys) refused by the schema, where `finetune validate`
and the operator see them."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel

from finetune_runtime.cli import main
from finetune_runtime.config import (
    SPECIAL_TOKEN_KEYS,
    DatasetSettings,
    FineTuneConfig,
    OptimizerType,
    SchedulerType,
    parse_config,
)
from finetune_runtime.config.axolotl_keys import (
    DATASET_KEYS,
    OPTIMIZER_MAP,
    SCALAR_MAP,
    SCHEDULER_MAP,
)
from finetune_runtime.config.base import axolotl_key, model_in
from finetune_runtime.errors import ConfigError


def all_fields(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        yield prefix + name, field
        sub = model_in(field.annotation)
        if sub is not None:
            yield from all_fields(sub, f"{prefix}{name}.")


def test_every_field_has_a_description():
    fields = dict(all_fields(FineTuneConfig))
    assert len(fields) > 80
    assert [path for path, f in fields.items() if not (f.description or "").strip()] == []


def test_every_axolotl_mark_is_named_in_the_description():
    marked = {p: (f, axolotl_key(f)) for p, f in all_fields(FineTuneConfig) if axolotl_key(f)}
    assert len(marked) > 40
    for path, (field, key) in marked.items():
        if key != path.rsplit(".", 1)[-1]:  # a different name: say it
            assert f"axolotl: {key}" in str(field.description), path


def test_axolotl_maps_are_read_from_the_schema():
    """The maps the normaliser uses, exactly as they were when written by hand."""
    training = [
        "sequence_len",
        "sample_packing",
        "eval_batch_size",
        "gradient_accumulation_steps",
        "max_steps",
        "learning_rate",
        "warmup_steps",
        "warmup_ratio",
        "weight_decay",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "max_grad_norm",
        "save_steps",
        "saves_per_epoch",
        "save_total_limit",
        "eval_steps",
        "evals_per_epoch",
        "logging_steps",
        "gradient_checkpointing",
        "train_on_inputs",
        "resume_from_checkpoint",
    ]
    expected = {
        "lora_r": ("lora", "r"),
        "lora_alpha": ("lora", "alpha"),
        "lora_dropout": ("lora", "dropout"),
        "lora_target_modules": ("lora", "target_modules"),
        "lora_modules_to_save": ("lora", "modules_to_save"),
        "lora_fan_in_fan_out": ("lora", "fan_in_fan_out"),
        "peft_use_rslora": ("lora", "use_rslora"),
        "micro_batch_size": ("training", "batch_size"),
        "num_epochs": ("training", "epochs"),
        "auto_resume_from_checkpoints": ("training", "auto_resume"),
        "tokenizer_config": ("tokenizer",),
        "tokens": ("added_tokens",),
        "dataset_num_proc": ("dataset_processes",),
        "use_tensorboard": ("tracking", "tensorboard"),
        **{f"wandb_{k}": ("tracking", "wandb", k) for k in ("project", "entity", "name", "mode")},
        **{
            f"mlflow_{k}": ("tracking", "mlflow", k)
            for k in ("tracking_uri", "experiment_name", "run_name")
        },
        **{k: ("training", k) for k in training},
    }
    assert expected == SCALAR_MAP
    assert DATASET_KEYS == {
        "field_messages": "field_messages",
        "message_field_role": "role_field",
        "message_field_content": "content_field",
        "roles_to_train": "roles_to_train",
        "chat_template": "chat_template",
        "field": "field_text",
        "field_system": "field_system",
        "system_prompt": "system_prompt",
    }
    assert set(DATASET_KEYS.values()) <= set(DatasetSettings.model_fields)
    assert {name: name for name in get_args(SchedulerType)} == SCHEDULER_MAP
    assert set(OPTIMIZER_MAP.values()) == set(get_args(OptimizerType))
    assert OPTIMIZER_MAP["adamw_hf"] == "adamw_torch"
    assert OPTIMIZER_MAP["adamw_8bit"] == "adamw_bnb_8bit"


def test_ignored_axolotl_keys_are_none_we_read():
    """A key both mapped and "ignored" would be read, never ignored: the list must not say so."""
    from finetune_runtime.config.axolotl import known_flat_keys
    from finetune_runtime.config.axolotl_keys import IGNORED_KEYS

    assert IGNORED_KEYS.isdisjoint(known_flat_keys())
    assert "plugins" not in IGNORED_KEYS  # checked plugin by plugin, never just ignored


def test_a_new_marked_field_reaches_the_flat_form():
    """A flat key maps to whatever field carries its mark (here micro_batch_size)."""
    config = parse_config(
        "base_model: x\nmicro_batch_size: 3\nnum_epochs: 2\ndatasets:\n  - path: d.jsonl\n"
    )
    assert (config.training.batch_size, config.training.epochs) == (3, 2)


def error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), "job.yaml")
    return str(info.value)


CUSTOM = """\
base_model: builtin:tiny-llama
datasets:
  - path: d.jsonl
    format: custom
    prompt_format: "{template}"
"""


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("Q: {question}", "unknown placeholder(s) {question}; use {instruction}"),
        ("{instruction", "invalid template (expected '}' before end of string)"),
        ("{instruction:>9}", "placeholders take no conversion or format spec: {instruction:>9}"),
        ("{input!r}", "placeholders take no conversion or format spec: {input!r}"),
    ],
)
def test_bad_prompt_templates_are_refused_with_their_line(template: str, words: str):
    text = error(CUSTOM.format(template=template))
    assert f"job.yaml:5: datasets[0].prompt_format: {words}" in text


def test_no_input_format_and_the_axolotl_form_are_checked_too():
    text = error(CUSTOM.format(template="{instruction}") + '    no_input_format: "{x}"\n')
    assert "job.yaml:6: datasets[0].no_input_format: unknown placeholder(s) {x}" in text
    flat = """\
    base_model: builtin:tiny-llama
    micro_batch_size: 1
    datasets:
      - path: d.jsonl
        type:
          field_instruction: q
          format: "Q: {question}"
    """
    assert "datasets[0].prompt_format: unknown placeholder(s) {question}" in error(flat)


def test_templates_of_other_formats_are_left_alone():
    """Only `custom` renders prompt_format, so only there is it checked (as before)."""
    config = parse_config(CUSTOM.replace("custom", "alpaca").format(template="{question}"))
    assert config.datasets[0].prompt_format == "{question}"


def test_unknown_special_tokens_are_refused_with_their_line():
    text = error(
        """\
        base_model: builtin:tiny-llama
        datasets: [{path: d.jsonl}]
        special_tokens:
          pad_token: "<pad>"
          separator: "<sep>"
        """
    )
    assert f"job.yaml:3: special_tokens: unknown key(s) separator; use {SPECIAL_TOKEN_KEYS[0]}" in (
        text
    )
    config = parse_config(
        {"base_model": "x", "datasets": [{"path": "d"}], "special_tokens": {"pad_token": "<p>"}}
    )
    assert config.special_tokens == {"pad_token": "<p>"}


def test_validate_reports_schema_checks_and_exits_2(tmp_path: Path, capsys):
    config = tmp_path / "job.yaml"
    config.write_text(CUSTOM.format(template="{question}"), encoding="utf-8")
    assert main(["validate", str(config)]) == 2
    assert f"{config}:5: datasets[0].prompt_format: unknown placeholder(s)" in (
        capsys.readouterr().out
    )
