"""The built-in formats: alpaca, completion, custom and sharegpt.

Registered like any plugin, as entry points in the `finetune.formats` group (the
project's pyproject.toml), and written against the same interface
(finetune_runtime.data.formats.types.PromptFormat).
"""

from __future__ import annotations

import string
from typing import Any

from finetune_runtime.config import DatasetSettings
from finetune_runtime.config.dataset import template_problems
from finetune_runtime.data.formats.chat import chat_segments
from finetune_runtime.data.formats.fields import system, text, type_name
from finetune_runtime.data.formats.types import ROLE_MAP, FormatContext, RowError, Segment

ALPACA_PREAMBLE_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request."
)
ALPACA_PREAMBLE_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
ALPACA_INPUT = (
    "{preamble}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = "{preamble}\n\n### Instruction:\n{instruction}\n\n### Response:\n"


def _fields_row(
    settings: DatasetSettings, prompt: str, input_text: str, response: str
) -> dict[str, Any]:
    return {
        settings.field_instruction: prompt,
        settings.field_input: input_text,
        settings.field_output: response,
    }


class Alpaca:
    """instruction/input/output rows in the alpaca prompt, or as chat turns (prompt_style)."""

    prompt_row = staticmethod(_fields_row)

    @staticmethod
    def needs_chat_template(settings: DatasetSettings) -> bool:
        return settings.prompt_style == "chat"

    @staticmethod
    def segments(row: dict[str, Any], ctx: FormatContext) -> list[Segment]:
        s = ctx.settings
        instruction = text(row, s.field_instruction, required=True)
        given = text(row, s.field_input, required=False)
        output = text(row, s.field_output, required=True)
        system_text = system(row, s)
        if s.prompt_style == "chat":
            user = f"{instruction}\n\n{given}" if given.strip() else instruction
            messages = [
                {"role": "user", "content": user},
                {"role": "assistant", "content": output},
            ]
            if system_text:
                messages.insert(0, {"role": "system", "content": system_text})
            return chat_segments(messages, [m["role"] == "assistant" for m in messages], ctx)
        if given.strip():
            preamble = system_text or ALPACA_PREAMBLE_INPUT
            prompt = ALPACA_INPUT.format(preamble=preamble, instruction=instruction, input=given)
        else:
            preamble = system_text or ALPACA_PREAMBLE_NO_INPUT
            prompt = ALPACA_NO_INPUT.format(preamble=preamble, instruction=instruction)
        return [Segment(prompt, ctx.train_on_inputs), Segment(output, True)]


class Completion:
    """Raw text (`field_text`), trained throughout."""

    @staticmethod
    def segments(row: dict[str, Any], ctx: FormatContext) -> list[Segment]:
        return [Segment(text(row, ctx.settings.field_text, required=True), True)]


class Custom:
    """The user's own prompt template (`prompt_format`) around instruction/input/system."""

    prompt_row = staticmethod(_fields_row)

    @staticmethod
    def check_settings(settings: DatasetSettings) -> list[tuple[str, str]]:
        """The schema's own template check (config.dataset), run again before any row."""
        return template_problems(settings)

    @staticmethod
    def segments(row: dict[str, Any], ctx: FormatContext) -> list[Segment]:
        s = ctx.settings
        template = s.prompt_format or ""
        names = {n for _, n, _, _ in string.Formatter().parse(template) if n}
        given = text(row, s.field_input, required=False)
        if not given.strip() and s.no_input_format:
            template = s.no_input_format
        values = {
            "instruction": text(row, s.field_instruction, required="instruction" in names),
            "input": given,
            "system": system(row, s),
        }
        output = text(row, s.field_output, required=True)
        return [Segment(template.format(**values), ctx.train_on_inputs), Segment(output, True)]


class ShareGPT:
    """Conversations (`conversations`/`messages` turns) rendered with the chat template."""

    @staticmethod
    def needs_chat_template(settings: DatasetSettings) -> bool:
        return True

    @staticmethod
    def prompt_row(
        settings: DatasetSettings, prompt: str, input_text: str, response: str
    ) -> dict[str, Any]:
        role, content = settings.role_field or "role", settings.content_field or "content"
        turns = [{role: "user", content: prompt}, {role: "assistant", content: response}]
        return {settings.field_messages or "conversations": turns}

    @staticmethod
    def segments(row: dict[str, Any], ctx: FormatContext) -> list[Segment]:
        s = ctx.settings
        key, turns = _turns(row, s)
        messages: list[dict[str, str]] = []
        for i, turn in enumerate(turns):
            message = _message(turn, f"{key}[{i}]", s)
            if message is not None:
                messages.append(message)
        if s.system_prompt and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": s.system_prompt})
        trainable = [m["role"] in ctx.roles_to_train for m in messages]
        if not any(trainable):
            raise RowError(
                key,
                "conversation has no trainable turn (roles_to_train: "
                f"{', '.join(s.roles_to_train)}); every row needs at least one",
            )
        return chat_segments(messages, trainable, ctx)


def _turns(row: dict[str, Any], s: DatasetSettings) -> tuple[str, list[Any]]:
    """The key holding the turns and the (non-empty) list of them."""
    key = s.field_messages
    if key is None:
        key = next((k for k in ("conversations", "messages") if k in row), "conversations")
        if key not in row:
            raise RowError(
                "conversations",
                "required field is missing (sharegpt rows hold their turns under "
                "'conversations' or 'messages'; set field_messages for another key)",
            )
    turns = row.get(key)
    if turns is None:
        raise RowError(key, "required field is missing")
    if not isinstance(turns, list):
        raise RowError(key, f"must be an array of turns, got {type_name(turns)}")
    if not turns:
        raise RowError(key, "conversation has no turns")
    return key, turns


def _message(turn: Any, here: str, s: DatasetSettings) -> dict[str, str] | None:
    """One turn as {"role", "content"}; None for an empty system turn (skipped)."""
    if not isinstance(turn, dict):
        raise RowError(here, f"each turn must be an object, got {type_name(turn)}")
    role_key = s.role_field or ("from" if "from" in turn else "role")
    content_key = s.content_field or ("value" if role_key == "from" else "content")
    role_raw = turn.get(role_key)
    if not isinstance(role_raw, str):
        raise RowError(
            f"{here}.{role_key}",
            "missing" if role_raw is None else f"must be a string, got {type_name(role_raw)}",
        )
    role = ROLE_MAP.get(role_raw.strip().lower())
    if role is None:
        raise RowError(
            f"{here}.{role_key}",
            f"unknown role {role_raw!r}; use one of {', '.join(sorted(ROLE_MAP))}",
        )
    content = turn.get(content_key)
    if not isinstance(content, str):
        raise RowError(
            f"{here}.{content_key}",
            "missing" if content is None else f"must be a string, got {type_name(content)}",
        )
    if role != "system" and not content.strip():
        raise RowError(f"{here}.{content_key}", f"empty {role} turn")
    if role == "system" and not content.strip():
        return None
    return {"role": role, "content": content}
