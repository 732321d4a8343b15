"""Helpers for the training-engine tests: tiny configs and runs on the builtin tiny Llama.

Everything trains for real (torch on CPU); only sizes are small. The default data
is 8 rows of the packaged Alpaca sample in one batch, so every step sees the same
batch and "the loss falls" is a stable, meaningful check.
"""

from __future__ import annotations

import json
import socket
from importlib import resources
from pathlib import Path
from typing import Any

from finetune_runtime.config import FineTuneConfig, parse_config
from finetune_runtime.train.loop import TrainOptions, TrainResult, train

PACKAGED = resources.files("finetune_runtime") / "data" / "alpaca_sample.jsonl"
TEST_DATA = Path(__file__).resolve().parent / "data"


def write_rows(path: Path, rows: int, offset: int = 0) -> Path:
    lines = PACKAGED.read_text(encoding="utf-8").splitlines()[offset : offset + rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def tiny_config(tmp_path: Path, rows: int = 8, **update: Any) -> FineTuneConfig:
    """A fast LoRA config: `rows` Alpaca rows, no dropout, fp32, no checkpoints unless asked."""
    data = tmp_path / "data.jsonl"
    tmp_path.mkdir(parents=True, exist_ok=True)
    if not data.exists():
        write_rows(data, rows)
    base: dict[str, Any] = {
        "base_model": "builtin:tiny-llama",
        "adapter": "lora",
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "datasets": [{"path": str(data), "format": "alpaca"}],
        "training": {
            "max_steps": 6,
            "batch_size": 8,
            "learning_rate": 0.01,
            "scheduler": "constant",
            "sequence_len": 256,
            "logging_steps": 1,
            "precision": "fp32",
        },
        "output_dir": str(tmp_path / "out"),
        "seed": 7,
    }
    return parse_config(_merge(base, update))


def run(config: FineTuneConfig, **options: Any) -> TrainResult:
    options.setdefault("serve_progress", False)
    options.setdefault("progress_bar", False)
    return train(config, TrainOptions(**options))


def losses(result: TrainResult) -> list[float]:
    return [h["loss"] for h in result.summary["losses"]]


def read_summary(output_dir: Path) -> dict[str, Any]:
    return json.loads((output_dir / "train_summary.json").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
