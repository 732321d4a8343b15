"""`finetune run`: validate → train → merge → sample, in-process and as `make demo` runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from train_helpers import tiny_config

from finetune_runtime.cli import main as cli_main
from finetune_runtime.commands.run import demo_config, loss_verdict


def test_loss_verdict_averages_both_ends() -> None:
    assert loss_verdict([5.0, 4.0, 3.0, 2.0, 1.0, 0.5]) == (True, 4.0, 1.1666666666666667)
    fell, start, end = loss_verdict([1.0, 2.0])
    assert not fell and (start, end) == (1.0, 2.0)
    with pytest.raises(ValueError):
        loss_verdict([1.0])


def test_demo_config_is_the_tiny_preset() -> None:
    config = demo_config(None)
    assert config.base_model == "builtin:tiny-llama"
    assert config.output_dir == "./outputs/demo"
    assert Path(config.datasets[0].path).name == "alpaca_sample.jsonl"
    assert Path(config.datasets[0].path).is_file()


def test_run_with_a_config(tmp_path: Path, capsys) -> None:
    config = tiny_config(tmp_path, training={"max_steps": 4})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    code = cli_main(["run", str(path), "--max-new-tokens", "8"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "✓ loss fell" in out
    assert "prompt" in out and "reference" in out and "generated" in out
    root = Path(config.output_dir)
    assert (root / "adapter" / "adapter_model.safetensors").is_file()
    assert (root / "merged" / "model.safetensors").is_file()


@pytest.mark.slow
def test_finetune_run_demo_subprocess(tmp_path: Path) -> None:
    """What `make demo` does, as a real process: the packaged tiny preset end to end."""
    out_dir = tmp_path / "demo"
    env = dict(os.environ, COLUMNS="120")
    proc = subprocess.run(
        [sys.executable, "-m", "finetune_runtime.cli", "run", "--output-dir", str(out_dir)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "✓ loss fell" in proc.stdout
    # The newcomer's proof that it learned: greedy generations on its training prompts are
    # the reference answers word for word; the held-out prompt is shown, labelled as such.
    assert "3/3 training answers reproduced word for word" in proc.stdout, proc.stdout[-4000:]
    assert proc.stdout.count("✓ matches the reference") == 3
    assert "sample: held out (never trained on)" in proc.stdout
    summary = json.loads((out_dir / "train_summary.json").read_text())
    assert summary["last_loss"] < summary["first_loss"]
    assert summary["status"] == "completed" and summary["steps"] == summary["total_steps"]
    assert (out_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (out_dir / "merged" / "model.safetensors").is_file()
