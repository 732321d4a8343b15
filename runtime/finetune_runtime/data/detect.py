"""Prompt format auto-detection from a dataset's first row (when `format` is omitted).

Pure: a row in, a format name out.

- a list under `field_messages`, `conversations` or `messages` -> sharegpt
  (rendered with the chat template)
- the text field (`text`) without instruction/output fields -> completion
- anything else -> alpaca (rows lacking its fields then get alpaca's field errors)
"""

from __future__ import annotations

from typing import Any

from finetune_runtime.config import DatasetSettings


def detect_format(row: Any, settings: DatasetSettings) -> str:
    if not isinstance(row, dict):
        return "alpaca"
    for key in (settings.field_messages, "conversations", "messages"):
        if key and isinstance(row.get(key), list):
            return "sharegpt"
    has_alpaca = settings.field_instruction in row or settings.field_output in row
    if isinstance(row.get(settings.field_text), str) and not has_alpaca:
        return "completion"
    return "alpaca"


def resolved(settings: DatasetSettings, first_row: Any) -> tuple[DatasetSettings, bool]:
    """`settings` with `format` filled in, and whether it was detected."""
    if settings.format is not None:
        return settings, False
    fmt = detect_format(first_row, settings)
    return settings.model_copy(update={"format": fmt}), True
