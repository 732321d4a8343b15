"""The config and dataset docs keep up with the schema, the bundled templates and presets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from finetune_runtime.config import (
    DatasetSettings,
    FineTuneConfig,
    LoraSettings,
    QuantizationSettings,
    Splits,
    TrainingSettings,
)
from finetune_runtime.config.presets import preset_names
from finetune_runtime.data.templates import BUNDLED

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize(
    "model",
    [FineTuneConfig, LoraSettings, QuantizationSettings, DatasetSettings, Splits, TrainingSettings],
)
def test_every_config_key_is_documented(model: type[BaseModel]):
    text = (DOCS / "config.md").read_text(encoding="utf-8")
    missing = [name for name in model.model_fields if f"`{name}`" not in text]
    assert not missing, f"docs/config.md does not describe {model.__name__}: {missing}"


def test_every_bundled_template_and_preset_is_documented():
    datasets = (DOCS / "datasets.md").read_text(encoding="utf-8")
    assert [n for n in BUNDLED if f"`{n}`" not in datasets] == []
    config = (DOCS / "config.md").read_text(encoding="utf-8")
    assert [n for n in preset_names() if f"`{n}`" not in config] == []
