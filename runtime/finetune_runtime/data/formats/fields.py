"""Reading fields of a raw row, with errors that name the field: helpers for formats."""

from __future__ import annotations

from typing import Any

from finetune_runtime.config import DatasetSettings
from finetune_runtime.data.formats.types import RowError


def type_name(value: Any) -> str:
    """How a JSON value is described in an error ("an array", "a number (3)", ...)."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if type(value) in names:
        return names[type(value)]
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    return "null" if value is None else type(value).__name__


def text(row: dict[str, Any], key: str, *, required: bool) -> str:
    """A string field: required ones must be present and non-blank; optional ones default
    to ""."""
    if key not in row or row[key] is None:
        if required:
            present = ", ".join(sorted(map(str, row))) or "none"
            raise RowError(key, f"required field is missing (fields present: {present})")
        return ""
    value = row[key]
    if not isinstance(value, str):
        raise RowError(key, f"must be a string, got {type_name(value)}")
    if required and not value.strip():
        raise RowError(key, "required field is empty")
    return value


def system(row: dict[str, Any], settings: DatasetSettings) -> str:
    """The row's system prompt (`field_system`), else the configured `system_prompt`."""
    if settings.field_system:
        value = text(row, settings.field_system, required=False)
        if value.strip():
            return value
    return settings.system_prompt or ""
