"""Starter configs shipped with the package (`presets/<name>.yaml`), for `finetune init`.

Presets are commented YAML kept as text so the comments survive. A preset may
name the packaged example data with `@PACKAGED_ALPACA_SAMPLE@`; rendering
replaces it with that file's absolute path, so the written config works from
any directory.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from finetune_runtime.errors import ConfigError

PLACEHOLDERS = {"@PACKAGED_ALPACA_SAMPLE@": "alpaca_sample.jsonl"}


def preset_names() -> list[str]:
    folder = resources.files("finetune_runtime") / "presets"
    return sorted(
        entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml")
    )


def preset_text(name: str) -> str:
    """The preset as shipped (placeholders not yet replaced)."""
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    entry = resources.files("finetune_runtime") / "presets" / f"{name}.yaml"
    return entry.read_text(encoding="utf-8")


def render_preset(name: str) -> str:
    """The preset ready to write: placeholders replaced by absolute, YAML-quoted paths."""
    text = preset_text(name)
    for marker, filename in PLACEHOLDERS.items():
        if marker in text:
            # A JSON string is a valid YAML double-quoted scalar, whatever the path holds.
            text = text.replace(marker, json.dumps(str(packaged_data_path(filename))))
    return text


def packaged_data_path(name: str = "alpaca_sample.jsonl") -> Path:
    """Absolute path of a sample data file shipped in finetune_runtime/data/. It lives here,
    below `data` (which re-exports it), because presets name it and the schema layer may
    not import `data`."""
    return Path(str(resources.files("finetune_runtime") / "data" / name))
