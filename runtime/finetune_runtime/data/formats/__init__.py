"""Prompt formats: one raw row -> text segments, each marked trained or masked.

A format is looked up by the dataset's `format` name in the `finetune.formats` entry
point group (finetune_runtime.data.registry) and implements
finetune_runtime.data.formats.types.PromptFormat: `segments(row, ctx)`, and optionally
`needs_chat_template(settings)` and `check_settings(settings)`. The built-ins
(alpaca, completion, custom, sharegpt) live in `builtin` and are registered the same
way. A row that cannot be used raises `RowError` naming the field; the pipeline adds
the file and line.

Plugin authors import from here: Segment, RowError, FormatContext, chat_segments and
the field helpers (`text`, `system`, `type_name`).
"""

from __future__ import annotations

from typing import Any

from finetune_runtime.config import DatasetSettings, FineTuneConfig, Rule
from finetune_runtime.data import registry
from finetune_runtime.data.formats.builtin import (
    ALPACA_INPUT,
    ALPACA_NO_INPUT,
    ALPACA_PREAMBLE_INPUT,
    ALPACA_PREAMBLE_NO_INPUT,
)
from finetune_runtime.data.formats.chat import Renderer, chat_segments
from finetune_runtime.data.formats.fields import system, text, type_name
from finetune_runtime.data.formats.types import (
    ROLE_MAP,
    FormatContext,
    PromptFormat,
    RowError,
    Segment,
)
from finetune_runtime.errors import DatasetError

__all__ = [
    "ALPACA_INPUT",
    "ALPACA_NO_INPUT",
    "ALPACA_PREAMBLE_INPUT",
    "ALPACA_PREAMBLE_NO_INPUT",
    "ROLE_MAP",
    "FormatContext",
    "PromptFormat",
    "Renderer",
    "RowError",
    "Segment",
    "chat_segments",
    "check_settings",
    "config_rules",
    "needs_chat_template",
    "prompt_segments",
    "row_segments",
    "settings_problems",
    "system",
    "text",
    "type_name",
]


def needs_chat_template(settings: DatasetSettings) -> bool:
    """Whether the dataset's format renders chat turns (and so needs a Renderer)."""
    if settings.format is None:  # not detected yet
        return False
    hook = getattr(registry.load(str(settings.format)), "needs_chat_template", None)
    return bool(hook(settings)) if hook is not None else False


def settings_problems(settings: DatasetSettings) -> list[tuple[str, str]]:
    """(field, message) for each config-level problem of the dataset's format (no rows
    read); raises DatasetError when the format itself is unknown or unusable."""
    fmt = registry.load(str(settings.format))
    hook = getattr(fmt, "check_settings", None)
    return list(hook(settings)) if hook is not None else []


def config_rules(config: FineTuneConfig) -> list[Rule]:
    """The formats' config checks as schema rules (reported at the field and its line): an
    unknown or unloadable format name, and each format's own check_settings problems."""
    found: list[Rule] = []
    for i, ds in enumerate(config.datasets):
        if ds.format is None:  # detected from the data: always a built-in
            continue
        try:
            problems = settings_problems(ds)
        except DatasetError as exc:
            found.append((("datasets", i, "format"), exc.message))
            continue
        found.extend((("datasets", i, key), message) for key, message in problems)
    return found


def check_settings(settings: DatasetSettings, where: str) -> None:
    """Config-level checks that need no data (raised before reading any row)."""
    try:
        problems = settings_problems(settings)
    except DatasetError as exc:
        raise DatasetError(f"{where}.format: {exc.message}") from exc
    for key, message in problems[:1]:
        raise DatasetError(f"{where}.{key}: {message}")


def prompt_segments(ctx: FormatContext, prompt: str, input_text: str = "") -> list[Segment]:
    """The segments of a row of the dataset's format holding `prompt` (and `input_text`)
    as the user's part and a placeholder answer: generation cuts before the answer."""
    if ctx.settings.format is None:
        raise DatasetError(
            "the dataset's format is not set (training detects it from the data): set "
            "`format` in the config to render prompts the way training did"
        )
    name = ctx.settings.format
    hook = getattr(registry.load(name), "prompt_row", None)
    entry = registry.origin_of(name)
    plugin = f"format {name!r} ({entry.distribution if entry else 'unknown'})"
    if hook is None:
        raise DatasetError(
            f"{plugin} cannot build a generation prompt: it has no prompt_row(settings, "
            "prompt, input_text, response) (see docs/datasets.md)"
        )
    try:
        return row_segments(dict(hook(ctx.settings, prompt, input_text, ".")), ctx)
    except RowError as exc:
        raise DatasetError(f"{plugin} cannot render a generation prompt: {exc}") from exc


def row_segments(row: Any, ctx: FormatContext) -> list[Segment]:
    """The segments of one row for the dataset's format."""
    if not isinstance(row, dict):
        raise RowError(None, f"expected a JSON object, got {type_name(row)}")
    name = str(ctx.settings.format)
    fmt = registry.load(name)
    entry = registry.origin_of(name)
    if entry is None or entry.builtin:
        return list(fmt.segments(row, ctx))
    # A plugin's bug is reported at the row it failed on, naming the plugin.
    try:
        segments = fmt.segments(row, ctx)
    except RowError:
        raise
    except Exception as exc:
        raise RowError(
            None, f"format {name!r} ({entry.distribution}) failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(segments, list) or not all(isinstance(s, Segment) for s in segments):
        raise RowError(
            None,
            f"format {name!r} ({entry.distribution}) returned {type_name(segments)}, "
            "not a list of Segment",
        )
    return segments
