"""Bench data: the packaged Alpaca sample and a synthetic Alpaca set with a long-tailed
length distribution (what real instruction data looks like: many short answers, a few
long ones), plus the shared training config both throughput runs read."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Any

from finetune_runtime.data import packaged_data_path


def sample_words() -> list[str]:
    """The vocabulary of the packaged sample (the builtin tokenizers were trained on it,
    so synthetic text made of it tokenizes like the sample does)."""
    words: set[str] = set()
    for line in packaged_data_path().read_text(encoding="utf-8").splitlines():
        if line.strip():
            for value in json.loads(line).values():
                words.update(re.findall(r"[A-Za-z]+|\d+", str(value)))
    return sorted(words)


def _lognormal_words(rng: random.Random, median: float, sigma: float, cap: int) -> int:
    return max(1, min(cap, round(math.exp(rng.gauss(math.log(median), sigma)))))


def synthetic_rows(n: int, seed: int = 0, scale: float = 1.0) -> list[dict[str, str]]:
    """`n` Alpaca rows; output lengths log-normal (median 30 words × scale, sigma 0.9)."""
    rng = random.Random(seed)
    words = sample_words()

    def text(count: int) -> str:
        return " ".join(rng.choice(words) for _ in range(count))

    rows = []
    for _ in range(n):
        instruction = text(_lognormal_words(rng, 8, 0.5, 40)).capitalize() + "?"
        given = text(_lognormal_words(rng, 10, 0.8, 60)) if rng.random() < 0.6 else ""
        output = text(_lognormal_words(rng, 30 * scale, 0.9, int(400 * scale))) + "."
        rows.append({"instruction": instruction, "input": given, "output": output})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def train_config(
    data_path: str | Path,
    output_dir: str | Path,
    *,
    base_model: str,
    batch_size: int,
    accumulation: int,
    sequence_len: int,
    sample_packing: bool,
    learning_rate: float = 2e-4,
    seed: int = 0,
) -> dict[str, Any]:
    """The canonical config both the baseline and our loop are built from."""
    return {
        "base_model": base_model,
        "adapter": "lora",
        "lora": {
            "r": 8,
            "alpha": 16,
            "dropout": 0.05,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        },
        "datasets": [{"path": str(data_path), "format": "alpaca"}],
        "training": {
            "epochs": 100,  # never the limit: runs stop at max_steps
            "batch_size": batch_size,
            "gradient_accumulation_steps": accumulation,
            "learning_rate": learning_rate,
            "scheduler": "constant",
            "optimizer": "adamw_torch",
            "max_grad_norm": 1.0,
            "sequence_len": sequence_len,
            "sample_packing": sample_packing,
            "logging_steps": 100000,
            "precision": "fp32",
            "auto_resume": False,
        },
        "output_dir": str(output_dir),
        "seed": seed,
    }
