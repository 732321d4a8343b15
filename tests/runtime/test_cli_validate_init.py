"""`finetune validate` and `finetune init`, through cli.main and once as real processes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from finetune_runtime.cli import main
from finetune_runtime.config import load_config, parse_config
from finetune_runtime.config.presets import preset_names, preset_text, render_preset

DATA = Path(__file__).parent / "data"

VALID = """\
base_model: builtin:tiny-llama
adapter: lora
datasets:
  - path: {path}
    format: alpaca
    splits: {{validation: 1}}
training:
  batch_size: 2
  gradient_accumulation_steps: 3
  epochs: 2
  sequence_len: 512
"""


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def run_json(capsys, *argv: str) -> tuple[int, dict]:
    code = main(["validate", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


# --------------------------------------------------------------------------- validate


def test_validate_prints_a_summary(tmp_path, capsys):
    config = write(tmp_path, VALID.format(path=DATA / "alpaca.jsonl"))
    assert main(["validate", str(config), "--world-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "builtin:tiny-llama" in out
    assert "lora, r=8 alpha=16" in out
    assert "24 = 2 (batch) × 3 (accumulation) × 4 (processes)" in out
    assert "is valid" in out


@pytest.mark.parametrize(
    ("quantization", "shown", "not_shown"),
    [
        ("{bits: 8}", "lora (8-bit), r=8", "nf4"),
        ("{bits: 4}", "lora (4-bit nf4, double quant), r=8", "8-bit"),
        ("{bits: 4, type: fp4, double_quant: false}", "lora (4-bit fp4), r=8", "double"),
    ],
)
def test_validate_summary_names_the_quantization_the_loader_applies(
    tmp_path, capsys, quantization, shown, not_shown
):
    """8-bit loading ignores `type`/`double_quant` (model.bnb_config): the summary must too."""
    text = VALID.format(path=DATA / "alpaca.jsonl") + f"quantization: {quantization}\n"
    assert main(["validate", str(write(tmp_path, text))]) == 0
    out = capsys.readouterr().out
    assert shown in out and not_shown not in out, out


def test_validate_json_summary_and_step_estimate(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = write(tmp_path, VALID.format(path=DATA / "alpaca.jsonl"))
    code, result = run_json(capsys, str(config))
    assert code == 0 and result["valid"] is True and result["issues"] == []
    summary = result["summary"]
    assert summary["world_size"] == 2
    assert summary["effective_batch_size"] == 2 * 3 * 2
    # 6 rows, 1 for validation: 5 rows / (2 per batch × 2 processes) = 2 micro-batches,
    # accumulated 3 at a time -> 1 step per epoch, 2 epochs
    assert summary["train_rows"] == 5
    assert (summary["steps_per_epoch"], summary["total_steps"]) == (1, 2)
    assert summary["datasets"][0]["resolved"] == str(DATA / "alpaca.jsonl")


def test_validate_reports_every_issue_with_line_and_exits_2(tmp_path, capsys):
    config = write(
        tmp_path,
        """\
        base_model: builtin:tiny-llama
        adapter: lora
        lora:
          r: 0
        datasets:
          - path: d.jsonl
            format: alpaca
        training:
          learning_rate: -1
          bacth_size: 4
        """,
    )
    assert main(["validate", str(config)]) == 2
    out = capsys.readouterr().out
    assert "3 problems" in out
    assert f"{config}:4: lora.r:" in out
    assert f"{config}:9: training.learning_rate:" in out
    assert f"{config}:10: training.bacth_size: unknown key; did you mean 'batch_size'?" in out
    code, result = run_json(capsys, str(config))
    assert code == 2 and result["valid"] is False
    assert sorted(i["field"] for i in result["issues"]) == [
        "lora.r",
        "training.bacth_size",
        "training.learning_rate",
    ]
    assert {i["line"] for i in result["issues"]} == {4, 9, 10}


def test_validate_missing_file_and_bad_yaml(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().out
    bad = write(tmp_path, "base_model: [unclosed\n")
    assert main(["validate", str(bad)]) == 2
    assert "invalid YAML" in capsys.readouterr().out


def test_validate_prints_axolotl_warnings(tmp_path, capsys):
    config = write(
        tmp_path,
        f"""\
        base_model: builtin:tiny-llama
        micro_batch_size: 2
        flash_attention: true
        datasets:
          - path: {DATA / "alpaca.jsonl"}
            type: alpaca
        """,
    )
    assert main(["validate", str(config)]) == 0
    out = capsys.readouterr().out
    assert "warning:" in out and "flash_attention" in out
    _, result = run_json(capsys, str(config))
    assert any("flash_attention" in w for w in result["warnings"])


def test_validate_reports_a_missing_dataset_as_an_error(tmp_path, capsys):
    """Training would fail on it: validate says so (exit 2), at the field and line."""
    config = write(tmp_path, VALID.format(path="data/train.jsonl"))
    code, result = run_json(capsys, str(config))
    assert code == 2 and not result["valid"]
    (issue,) = result["issues"]
    assert issue["field"] == "datasets[0].path" and issue["line"] == 4
    assert "dataset file not found" in issue["message"]


def test_check_data_tokenizes_and_reports_stats(tmp_path, capsys):
    config = write(
        tmp_path, VALID.format(path=DATA / "sharegpt.json").replace("alpaca", "sharegpt")
    )
    code, result = run_json(capsys, str(config), "--check-data")
    assert code == 0
    data = result["data"]
    assert data["datasets"][0]["rows"] == 3
    assert data["train_examples"] == 2 and data["eval_examples"] == 1
    assert data["datasets"][0]["chat_template"] == "tokenizer_default"
    assert result["summary"]["steps_estimated_from"] == "after tokenizing and packing"
    assert main(["validate", str(config), "--check-data"]) == 0
    assert "datasets (tokenized)" in capsys.readouterr().out


def test_check_data_finds_the_bad_row(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n')
    config = write(tmp_path, VALID.format(path="d.jsonl"))  # relative to the config
    assert main(["validate", str(config), "--check-data"]) == 3
    out = capsys.readouterr().out
    assert f"{data}:2: field 'output': required field is missing" in out
    code, result = run_json(capsys, str(config), "--check-data")
    assert code == 3 and result["valid"] is False
    assert (result["data_error"]["path"], result["data_error"]["line"]) == (str(data), 2)


def test_check_data_with_a_local_model_directory(tmp_path, capsys, tiny_model_dir):
    config = write(
        tmp_path,
        VALID.format(path=DATA / "alpaca.jsonl").replace("builtin:tiny-llama", str(tiny_model_dir)),
    )
    code, result = run_json(capsys, str(config), "--check-data")
    assert code == 0, result
    assert result["data"]["train_examples"] == 5


def test_check_data_needs_a_local_tokenizer(tmp_path, capsys):
    config = write(
        tmp_path, VALID.format(path=DATA / "alpaca.jsonl").replace("builtin:tiny-llama", "org/m")
    )
    code, result = run_json(capsys, str(config), "--check-data")
    assert code == 4
    assert "not available here" in result["data_error"]["message"]


# --------------------------------------------------------------------------- init


@pytest.mark.parametrize("name", ["llama2-7b", "mistral-7b", "phi3-mini", "tiny"])
def test_every_preset_is_valid_and_commented(name):
    assert name in preset_names()
    text = render_preset(name)
    config = parse_config(text, source=name)
    assert text.lstrip().startswith("#") and text.count("#") > 10
    assert "@" not in "".join(line.split("#")[0] for line in text.splitlines())
    if name == "tiny":
        assert config.base_model == "builtin:tiny-llama"
        assert Path(config.datasets[0].path).is_absolute()
        assert Path(config.datasets[0].path).is_file()
        assert "@PACKAGED_ALPACA_SAMPLE@" in preset_text(name)


def test_init_writes_refuses_to_overwrite_and_forces(tmp_path, capsys):
    out = tmp_path / "sub" / "job.yaml"
    assert main(["init", "--preset", "phi3-mini", "-o", str(out)]) == 0
    assert out.read_text() == render_preset("phi3-mini")
    assert f"wrote {out}" in capsys.readouterr().out
    out.write_text("# my edits\n")
    assert main(["init", "--preset", "tiny", "-o", str(out)]) == 1
    assert "already exists: pass --force" in capsys.readouterr().err
    assert out.read_text() == "# my edits\n"
    assert main(["init", "--preset", "tiny", "-o", str(out), "--force"]) == 0
    assert "builtin:tiny-llama" in out.read_text()


def test_init_to_stdout_and_unknown_preset(capsys):
    assert main(["init", "--preset", "mistral-7b", "-o", "-"]) == 0
    assert capsys.readouterr().out == render_preset("mistral-7b")
    with pytest.raises(SystemExit) as info:
        main(["init", "--preset", "gpt-5"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_init_then_validate_as_processes_from_another_directory(tmp_path, finetune_cache):
    """The installed `finetune` entry point, run as real processes; the tiny preset's data
    path works from any working directory."""
    finetune = Path(sys.executable).with_name("finetune")
    env = {**os.environ, "FINETUNE_CACHE": str(finetune_cache)}
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    created = subprocess.run(
        [str(finetune), "init", "--preset", "tiny"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    checked = subprocess.run(
        [str(finetune), "validate", str(work / "finetune.yaml"), "--check-data", "--json"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert checked.returncode == 0, checked.stderr
    result = json.loads(checked.stdout)
    data, summary = result["data"], result["summary"]
    # the tiny preset trains on 10% of the 156 packaged rows and holds the rest out
    assert data["train_examples"] == 16 and data["eval_examples"] == 140
    assert 0.85 < data["packing_efficiency"] <= 1
    training = load_config(work / "finetune.yaml").training
    per_epoch = math.ceil(
        math.ceil(data["train_rows"] / training.batch_size) / training.gradient_accumulation_steps
    )
    assert summary["steps_per_epoch"] == per_epoch
    assert summary["total_steps"] == per_epoch * training.epochs
