"""Training equivalence: the same YAML trained by axolotl and by us gives the same losses.

Every step sees the whole (16-row) dataset as one batch, so neither tool's data order
matters; fp32, AdamW, constant learning rate, no warm-up, the same seed. The tolerance
per step is stated in docs/axolotl.md and here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.vs_axolotl import runs
from bench.vs_axolotl.cases import TRAIN_STEPS, write_training_case

# Relative per-step tolerance on the training loss, by kind of training.
TOLERANCE = {"full": 1e-4, "lora": 0.01, "qlora": 0.01}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lora", "full", "qlora"])
def test_loss_curves_agree(kind: str, axolotl_venv: Path, model_dir: Path, tmp_path: Path) -> None:
    ours_dir, theirs_dir = tmp_path / "ours", tmp_path / "axolotl"
    ours = runs.ours(write_training_case(kind, model_dir, ours_dir), ours_dir)
    theirs = runs.theirs(write_training_case(kind, model_dir, theirs_dir), theirs_dir)
    assert len(ours.losses) == len(theirs.losses) == TRAIN_STEPS, (ours.losses, theirs.losses)
    gaps = [abs(o - t) / t for o, t in zip(ours.losses, theirs.losses, strict=True)]
    assert max(gaps) <= TOLERANCE[kind], (
        f"{kind}: ours {ours.losses} vs axolotl {theirs.losses}, worst relative gap {max(gaps):.4f}"
    )
    # The curves must also move: a run that learned nothing would agree trivially.
    assert ours.losses[-1] < ours.losses[0] and theirs.losses[-1] < theirs.losses[0]
