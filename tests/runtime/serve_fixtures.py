"""Trained outputs for the serving tests: tiny LoRA runs trained for real, one merged.

The session fixtures `trained_run` and `second_run` (tests/runtime/conftest.py) build them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from train_helpers import run, tiny_config

from finetune_runtime.model.merge import merge


@dataclass(frozen=True)
class Trained:
    config_path: Path
    output_dir: Path

    @property
    def adapter(self) -> Path:
        return self.output_dir / "adapter"

    @property
    def merged(self) -> Path:
        return self.output_dir / "merged"


def train_outputs(root: Path, *, seed: int, merged: bool) -> Trained:
    config = tiny_config(root, seed=seed, training={"max_steps": 3, "learning_rate": 0.01})
    run(config)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")), encoding="utf-8")
    if merged:
        merge(config)
    return Trained(path, Path(config.output_dir))


def reference_generate(model: Any, prompt_ids: list[int], max_new_tokens: int, eos: int) -> list:
    """transformers `generate`, greedy, one unpadded prompt: the ids after the prompt, no eos."""
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    return [t for t in out[0, len(prompt_ids) :].tolist() if t != eos]
