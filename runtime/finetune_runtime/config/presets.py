"""Starter configs shipped with the package (`presets/<name>.yaml`), for `finetune init`.

Presets are commented YAML kept as text so the comments survive. A preset may
name the packaged example data with `@PACKAGED_ALPACA_SAMPLE@`; rendering
replaces it with that file's absolute path, so the written config works from
any directory.
"""

from __future__ import annotations

import json
from importlib import resources

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
            text = text.replace(marker, json.dumps(_packaged_data(filename)))
    return text


def _packaged_data(filename: str) -> str:
    """A sample file shipped in finetune_runtime/data/ (found without importing `data`,
    which the schema layer must not)."""
    return str(resources.files("finetune_runtime") / "data" / filename)
