"""Bad data is never skipped silently: every kind of bad row names file:line and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from finetune_runtime.config import parse_config
from finetune_runtime.data import build_datasets
from finetune_runtime.errors import ConfigError, DatasetError

GOOD_ALPACA = {"instruction": "Say hi.", "output": "Hi."}
GOOD_CHAT = {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}


def build(tokenizer: Any, path: Path, **dataset: Any):
    config = parse_config(
        {"base_model": "builtin:tiny-llama", "datasets": [{"path": str(path), **dataset}]}
    )
    return build_datasets(config, tokenizer)


def jsonl(tmp_path: Path, *lines: Any, name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text(
        "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n",
        encoding="utf-8",
    )
    return path


def error(tokenizer: Any, path: Path, **dataset: Any) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        build(tokenizer, path, **dataset)
    return info.value


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ('{"instruction": "x", "output": "y"', "malformed JSON"),
        ("[1, 2]", "expected a JSON object, got an array"),
        ('"just text"', "expected a JSON object, got a string"),
        ({"instruction": "x"}, "field 'output': required field is missing"),
        ({"instruction": "x", "output": "  "}, "field 'output': required field is empty"),
        (
            {"instruction": 7, "output": "y"},
            "field 'instruction': must be a string, got a number (7)",
        ),
        ({"instruction": "x", "input": ["a"], "output": "y"}, "field 'input': must be a string"),
    ],
)
def test_bad_alpaca_rows_name_the_line_and_field(tiny_tokenizer, tmp_path, bad, fragment):
    path = jsonl(tmp_path, GOOD_ALPACA, GOOD_ALPACA, "", bad, GOOD_ALPACA)
    err = error(tiny_tokenizer, path, format="alpaca")
    assert err.path == str(path)
    assert err.line == 4  # blank lines still count
    assert str(err).startswith(f"{path}:4: ")
    assert fragment in str(err)


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ({"conversations": [{"from": "alien", "value": "x"}]}, "unknown role 'alien'"),
        (
            {"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
            "no trainable turn",
        ),
        ({"conversations": []}, "conversation has no turns"),
        ({"conversations": "hi"}, "must be an array of turns"),
        ({"turns": []}, "field 'conversations': required field is missing"),
        ({"conversations": [{"from": "human"}]}, "field 'conversations[0].value': missing"),
        ({"conversations": [{"value": "x"}]}, "field 'conversations[0].role': missing"),
        ({"conversations": ["hello"]}, "each turn must be an object"),
        (
            {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": 3}]},
            "field 'conversations[1].value': must be a string",
        ),
        (
            {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": ""}]},
            "empty assistant turn",
        ),
    ],
)
def test_bad_conversations_name_the_line_and_field(tiny_tokenizer, tmp_path, bad, fragment):
    path = jsonl(tmp_path, GOOD_CHAT, bad)
    err = error(tiny_tokenizer, path, format="sharegpt")
    assert (err.path, err.line) == (str(path), 2)
    assert fragment in str(err)


def test_json_array_errors_give_the_item_and_its_line(tiny_tokenizer, tmp_path):
    path = tmp_path / "data.json"
    path.write_text(
        '[\n  {"instruction": "a", "output": "b"},\n  {\n    "instruction": "c"\n  }\n]\n'
    )
    err = error(tiny_tokenizer, path, format="alpaca")
    assert err.line == 3
    assert "item [1]: field 'output': required field is missing" in str(err)


def test_malformed_json_array(tiny_tokenizer, tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": }\n]\n')
    err = error(tiny_tokenizer, path, format="alpaca")
    assert err.line == 3
    assert "item [1]: malformed JSON" in str(err)
    path.write_text('[{"instruction": "a", "output": "b"} {"x": 1}]')
    assert "expected ',' or ']'" in str(error(tiny_tokenizer, path))
    path.write_text('[{"instruction": "a", "output": "b"}] trailing')
    assert "after the closing ']'" in str(error(tiny_tokenizer, path))


def test_not_utf8_names_the_line(tiny_tokenizer, tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(
        json.dumps(GOOD_ALPACA).encode() + b"\n" + b'{"instruction": "caf\xe9", "output": "x"}\n'
    )
    err = error(tiny_tokenizer, path)
    assert err.line == 2
    assert "not UTF-8" in str(err)


def test_empty_files(tiny_tokenizer, tmp_path):
    path = jsonl(tmp_path, "", "  ")
    assert "empty" in str(error(tiny_tokenizer, path))
    (tmp_path / "a.json").write_text("[]")
    assert "no records" in str(error(tiny_tokenizer, tmp_path / "a.json"))


def test_completion_row_without_text(tiny_tokenizer, tmp_path):
    path = jsonl(tmp_path, {"text": "ok"}, {"content": "wrong key"})
    err = error(tiny_tokenizer, path, format="completion")
    assert err.line == 2
    assert "field 'text': required field is missing (fields present: content)" in str(err)


def test_custom_format_placeholders_are_checked_before_reading(tiny_tokenizer, tmp_path):
    """The schema refuses a bad template (so `validate` and the operator do); the pipeline
    runs the same check before reading a row, for settings built without the schema."""
    path = jsonl(tmp_path, GOOD_ALPACA)
    for template, words in (
        (
            "{instruction} {question}",
            "datasets[0].prompt_format: unknown placeholder(s) {question}",
        ),
        ("{instruction", "datasets[0].prompt_format: invalid template"),
    ):
        with pytest.raises(ConfigError) as info:
            build(tiny_tokenizer, path, format="custom", prompt_format=template)
        assert words in str(info.value)
        config = parse_config(
            {"base_model": "builtin:tiny-llama", "datasets": [{"path": str(path)}]}
        )
        bad = config.datasets[0].model_copy(update={"format": "custom", "prompt_format": template})
        with pytest.raises(DatasetError) as raised:
            build_datasets(config.model_copy(update={"datasets": [bad]}), tiny_tokenizer)
        assert words in str(raised.value)


def test_custom_format_requires_the_fields_it_uses(tiny_tokenizer, tmp_path):
    path = jsonl(tmp_path, {"q": "x", "a": "y"}, {"a": "y"})
    err = error(
        tiny_tokenizer,
        path,
        format="custom",
        field_instruction="q",
        field_output="a",
        prompt_format="Q: {instruction}\nA: ",
    )
    assert err.line == 2
    assert "field 'q': required field is missing" in str(err)


def test_missing_file_and_hub_ids(tiny_tokenizer, tmp_path):
    config = parse_config(
        {"base_model": "builtin:tiny-llama", "datasets": [{"path": "data/train.jsonl"}]}
    )
    with pytest.raises(DatasetError, match="dataset file not found: .*data/train.jsonl"):
        build_datasets(config, tiny_tokenizer, base_dir=tmp_path)
    config = parse_config(
        {"base_model": "builtin:tiny-llama", "datasets": [{"path": "tatsu-lab/alpaca"}]}
    )
    with pytest.raises(DatasetError, match="hub datasets cannot be downloaded here"):
        build_datasets(config, tiny_tokenizer, base_dir=tmp_path)
    config = parse_config(
        {"base_model": "builtin:tiny-llama", "datasets": [{"path": "https://x.org/d.jsonl"}]}
    )
    with pytest.raises(DatasetError, match="unsupported URI scheme 'https'"):
        build_datasets(config, tiny_tokenizer, base_dir=tmp_path)


def test_validation_larger_than_the_dataset(tiny_tokenizer, tmp_path):
    path = jsonl(tmp_path, GOOD_ALPACA, GOOD_ALPACA)
    err = error(tiny_tokenizer, path, splits={"validation": 2})
    assert "datasets[0].splits.validation asks for 2 validation rows" in str(err)


def test_everything_dropped_by_truncation_is_an_error(tiny_tokenizer, tmp_path):
    path = jsonl(tmp_path, {"instruction": "word " * 40, "output": "ok"})
    config = parse_config(
        {
            "base_model": "builtin:tiny-llama",
            "datasets": [{"path": str(path)}],
            "training": {"sequence_len": 16},
        }
    )
    with pytest.raises(DatasetError, match="no usable training examples.*sequence_len=16"):
        build_datasets(config, tiny_tokenizer)
