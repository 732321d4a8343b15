"""Config-only checks live in the schema, so a FineTuneJob is refused as InvalidSpec at
apply time, not in the pod: prompt templates and special_tokens keys."""

from __future__ import annotations

import pytest
from op_fixtures import CONFIG, job

from finetune_operator.spec import SpecError, validate_job


def refusal(config: dict) -> str:
    with pytest.raises(SpecError) as info:
        validate_job(job({"config": config}))
    return str(info.value)


def test_a_bad_custom_prompt_template_is_an_invalid_spec():
    dataset = {"path": "train.jsonl", "format": "custom", "prompt_format": "Q: {question}"}
    text = refusal({**CONFIG, "datasets": [dataset]})
    assert "spec.config: datasets[0].prompt_format: unknown placeholder(s) {question}" in text


def test_an_unknown_special_token_key_is_an_invalid_spec():
    text = refusal({**CONFIG, "special_tokens": {"separator": "<sep>"}})
    assert "spec.config: special_tokens: unknown key(s) separator; use bos_token" in text


def test_the_yaml_form_names_the_line():
    text = refusal(
        "base_model: x\ndatasets:\n  - path: d.jsonl\n    format: custom\n"
        "    prompt_format: '{instruction:>9}'\n"
    )
    assert "spec.config:5: datasets[0].prompt_format: placeholders take no conversion" in text
