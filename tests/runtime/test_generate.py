"""`finetune generate`: standalone inference from a config, an output_dir, a checkpoint, an
adapter or a merged model, with the training data's prompt template.

Real training of the tiny Llama (2 steps, a checkpoint after each); the CLI runs in-process
and its answers are compared with greedy generation on the very prompts training used.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from train_helpers import PACKAGED, TEST_DATA, run, tiny_config

from finetune_runtime.cli import main as cli_main
from finetune_runtime.config import parse_config
from finetune_runtime.data import build_datasets
from finetune_runtime.model.generate import (
    find_weights,
    generate,
    load_for_generation,
    prompt_ids,
    sample_from_example,
)
from finetune_runtime.model.load import load_tokenizer, resolve_model_source

FIRST_ROW = json.loads(PACKAGED.read_text().splitlines()[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    tmp = tmp_path_factory.mktemp("generate")
    # A learning rate so low the model stays near its random init: it then writes varied
    # tokens that depend on every prompt token (a trained tiny model may answer with EOS
    # at once, which would make the comparisons below pass for any prompt).
    config = tiny_config(
        tmp,
        rows=4,
        training={"max_steps": 2, "batch_size": 4, "save_steps": 1, "learning_rate": 1e-5},
    )
    run(config)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path, config


def _training_prompt(config, tokenizer) -> list[int]:
    """The prompt of the first data row exactly as training tokenized it."""
    data = Path(config.output_dir).parent / "first.jsonl"
    data.write_text(json.dumps(FIRST_ROW) + "\n")
    one = config.model_copy(
        update={"datasets": [config.datasets[0].model_copy(update={"path": str(data)})]}
    )
    example = build_datasets(one, tokenizer).train[0]
    sample = sample_from_example(example)
    assert sample is not None
    return sample.prompt_ids


def test_generate_from_a_config_uses_the_training_prompt_template(trained, capsys) -> None:
    path, config = trained
    code = cli_main(
        [
            "generate",
            str(path),
            "--prompt",
            FIRST_ROW["instruction"],
            "--input",
            FIRST_ROW["input"],
            "--max-new-tokens",
            "6",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "adapter" in captured.err and "alpaca prompt template" in captured.err
    model, tokenizer = load_for_generation(find_weights(str(path)))
    expected = generate(model, tokenizer, _training_prompt(config, tokenizer), max_new_tokens=6)
    assert expected.strip() and captured.out == expected.strip() + "\n"
    raw = generate(model, tokenizer, FIRST_ROW["instruction"], max_new_tokens=6)
    assert raw != expected  # the template made a difference


def test_prompts_from_stdin_one_answer_per_line(trained, capsys, monkeypatch) -> None:
    path, _ = trained
    monkeypatch.setattr("sys.stdin", io.StringIO("Name a colour.\n\nSpell the word backwards.\n"))
    assert cli_main(["generate", str(path), "--max-new-tokens", "4"]) == 0
    piped = capsys.readouterr().out.splitlines()
    singles = []
    for prompt in ("Name a colour.", "Spell the word backwards."):
        assert cli_main(["generate", str(path), "--prompt", prompt, "--max-new-tokens", "4"]) == 0
        singles.append(capsys.readouterr().out.rstrip("\n"))
    assert len(piped) == 2 and piped == singles  # the blank line is skipped


def test_targets_checkpoints_adapters_and_merged_models(trained, capsys) -> None:
    path, config = trained
    out = Path(config.output_dir)
    assert find_weights(str(out)).path == out / "adapter"
    first = find_weights(str(path), checkpoint="1")
    assert first.path == out / "checkpoint-1" / "adapter" and first.config is not None
    assert find_weights(str(out / "checkpoint-2")).config == find_weights(str(path)).config
    bare = find_weights(str(out / "adapter"))
    assert bare.kind == "adapter" and bare.config is None

    # The merged model answers a raw prompt as the adapter on its base does.
    assert cli_main(["merge", str(path)]) == 0
    raw = ["--prompt", "### Instruction:\nName a colour.", "--max-new-tokens", "6"]
    capsys.readouterr()
    assert cli_main(["generate", str(out / "merged"), *raw]) == 0
    merged_answer = capsys.readouterr().out
    assert merged_answer.strip()
    assert cli_main(["generate", str(path), "--raw", *raw]) == 0
    assert capsys.readouterr().out == merged_answer

    assert cli_main(["generate", str(path), "--checkpoint", "9", "--prompt", "x"]) == 4
    assert "no such complete checkpoint (steps: 1, 2)" in capsys.readouterr().err


def test_bad_targets_are_one_line_errors(tmp_path: Path, capsys) -> None:
    assert cli_main(["generate", str(tmp_path / "missing.yaml"), "--prompt", "x"]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli_main(["generate", str(tmp_path / "empty"), "--prompt", "x"]) == 4
    err = capsys.readouterr().err
    assert "no trained weights" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("dataset", "row"),
    [
        ({"path": str(TEST_DATA / "sharegpt.json"), "format": "sharegpt"}, 0),
        (
            {"path": str(TEST_DATA / "alpaca.jsonl"), "format": "alpaca", "prompt_style": "chat"},
            0,
        ),
        (
            {
                "path": str(TEST_DATA / "custom.jsonl"),
                "format": "custom",
                "field_instruction": "question",
                "field_input": "context",
                "field_output": "answer",
                "prompt_format": "Q: {instruction}\n{input}\nA: ",
            },
            0,
        ),
    ],
)
def test_prompt_ids_match_what_training_masks(dataset: dict, row: int) -> None:
    """The rendered prompt is token for token the masked part of the training example."""
    config = parse_config({"base_model": "builtin:tiny-llama", "datasets": [dataset]})
    tokenizer = load_tokenizer(config, resolve_model_source(config.base_model))
    example = build_datasets(config, tokenizer).train
    raw = _raw_rows(dataset["path"])
    first = raw[row]
    if dataset["format"] == "sharegpt":
        turns = first["conversations"]
        text, given = turns[0]["value"], ""
        assert len(turns) == 2  # a single exchange: its prompt is the user turn
    else:
        settings = config.datasets[0]
        text, given = first[settings.field_instruction], first.get(settings.field_input, "")
    expected = [s.prompt_ids for s in (sample_from_example(e) for e in example) if s is not None]
    assert prompt_ids(config, tokenizer, text, given) in expected


def _raw_rows(path: str) -> list[dict]:
    text = Path(path).read_text()
    if path.endswith(".json"):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]
