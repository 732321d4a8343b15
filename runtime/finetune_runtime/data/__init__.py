"""Datasets: read JSON/JSONL, apply prompt formats and chat templates, mask prompts,
tokenize, split, pack, and collate.

The trainer needs only `build_datasets` and `make_collator` (the model side of
packing, `configure_model_for_packing`, is the trainer's: finetune_runtime.train.attention).
The packaged example data (`alpaca_sample.jsonl`) lives in this package too.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

__all__ = [
    "DataStats",
    "DatasetBundle",
    "DatasetStats",
    "TokenizedDataset",
    "build_datasets",
    "make_collator",
    "packaged_data_path",
]

if TYPE_CHECKING:
    from finetune_runtime.data.collate import make_collator
    from finetune_runtime.data.pipeline import (
        DatasetBundle,
        DatasetStats,
        DataStats,
        TokenizedDataset,
        build_datasets,
    )

_LAZY = {
    "make_collator": "collate",
    "DatasetBundle": "pipeline",
    "DatasetStats": "pipeline",
    "DataStats": "pipeline",
    "TokenizedDataset": "pipeline",
    "build_datasets": "pipeline",
}


def __getattr__(name: str) -> Any:
    """Import torch-dependent parts on first use, so `import finetune_runtime.data` is cheap."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def packaged_data_path(name: str = "alpaca_sample.jsonl") -> Path:
    """Absolute path of a data file shipped inside this package (config.presets finds it,
    imported here on first use so `import finetune_runtime.data` stays cheap)."""
    from finetune_runtime.config.presets import packaged_data_path as path

    return path(name)
