"""Prompt formats: one raw row -> text segments, each marked trained or masked.

Pure logic apart from rendering chat templates (Jinja, via transformers' renderer).
A row that cannot be used raises `RowError` naming the field; the pipeline adds
the file and line. Tokenization happens later, segment by segment, so the
boundary between prompt and response is exact in tokens too.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from finetune_runtime.config import DatasetSettings
from finetune_runtime.config.dataset import template_problems
from finetune_runtime.errors import DatasetError

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

# sharegpt / OpenAI-style role names -> the roles chat templates understand.
ROLE_MAP = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
}


class RowError(Exception):
    """A row is unusable: `field` is the key (or `messages[2].role`) at fault."""

    def __init__(self, field: str | None, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


@dataclass(frozen=True)
class Segment:
    text: str
    train: bool


@dataclass
class Renderer:
    """Renders a conversation with one chat template and the tokenizer's special tokens."""

    template: str
    name: str
    special_tokens: dict[str, Any] = field(default_factory=dict)
    # Added-token strings a segment boundary must never cut through.
    atomic_tokens: tuple[str, ...] = ()

    @classmethod
    def for_tokenizer(cls, template: str, name: str, tokenizer: Any) -> Renderer:
        specials = dict(getattr(tokenizer, "special_tokens_map", {}) or {})
        added: dict[str, int] = getattr(tokenizer, "get_added_vocab", dict)()
        atomic = tuple(sorted((t for t in added if len(t) > 1), key=len, reverse=True))
        return cls(template, name, specials, atomic)

    def render(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        # Annotated as `str` upstream; it returns (rendered conversations, generation indices).
        result: Any = render_jinja_template(
            conversations=[list(messages)],
            chat_template=self.template,
            add_generation_prompt=add_generation_prompt,
            **self.special_tokens,
        )
        return str(result[0][0])


@dataclass
class FormatContext:
    """Everything a format needs besides the row."""

    settings: DatasetSettings
    train_on_inputs: bool
    renderer: Renderer | None = None  # set for chat-style formats

    @property
    def roles_to_train(self) -> set[str]:
        return {ROLE_MAP.get(r, r) for r in self.settings.roles_to_train}


def needs_chat_template(settings: DatasetSettings) -> bool:
    return settings.format == "sharegpt" or (
        settings.format == "alpaca" and settings.prompt_style == "chat"
    )


def check_settings(settings: DatasetSettings, where: str) -> None:
    """Config-level checks that need no data (raised before reading any row); the schema's
    rules run the same check, so `finetune validate` reports it first."""
    for key, problem in template_problems(settings):
        raise DatasetError(f"{where}.{key}: {problem}")


def row_segments(row: Any, ctx: FormatContext) -> list[Segment]:
    """The segments of one row for the dataset's format."""
    if not isinstance(row, dict):
        raise RowError(None, f"expected a JSON object, got {_type_name(row)}")
    fmt = ctx.settings.format
    if fmt == "alpaca":
        return _alpaca(row, ctx)
    if fmt == "sharegpt":
        return _sharegpt(row, ctx)
    if fmt == "completion":
        return [Segment(_text(row, ctx.settings.field_text, required=True), True)]
    if fmt == "custom":
        return _custom(row, ctx)
    raise RowError(None, f"unknown format {fmt!r}")  # unreachable: the schema restricts it


# --------------------------------------------------------------------------- fields


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if type(value) in names:
        return names[type(value)]
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    return "null" if value is None else type(value).__name__


def _text(row: dict[str, Any], key: str, *, required: bool) -> str:
    """A string field: required ones must be present and non-blank."""
    if key not in row or row[key] is None:
        if required:
            present = ", ".join(sorted(map(str, row))) or "none"
            raise RowError(key, f"required field is missing (fields present: {present})")
        return ""
    value = row[key]
    if not isinstance(value, str):
        raise RowError(key, f"must be a string, got {_type_name(value)}")
    if required and not value.strip():
        raise RowError(key, "required field is empty")
    return value


def _system(row: dict[str, Any], settings: DatasetSettings) -> str:
    if settings.field_system:
        value = _text(row, settings.field_system, required=False)
        if value.strip():
            return value
    return settings.system_prompt or ""


# --------------------------------------------------------------------------- formats


def _alpaca(row: dict[str, Any], ctx: FormatContext) -> list[Segment]:
    s = ctx.settings
    instruction = _text(row, s.field_instruction, required=True)
    given = _text(row, s.field_input, required=False)
    output = _text(row, s.field_output, required=True)
    system = _system(row, s)
    if s.prompt_style == "chat":
        user = f"{instruction}\n\n{given}" if given.strip() else instruction
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        return _chat_segments(messages, [m["role"] == "assistant" for m in messages], ctx)
    if given.strip():
        preamble = system or ALPACA_PREAMBLE_INPUT
        prompt = ALPACA_INPUT.format(preamble=preamble, instruction=instruction, input=given)
    else:
        preamble = system or ALPACA_PREAMBLE_NO_INPUT
        prompt = ALPACA_NO_INPUT.format(preamble=preamble, instruction=instruction)
    return [Segment(prompt, ctx.train_on_inputs), Segment(output, True)]


def _custom(row: dict[str, Any], ctx: FormatContext) -> list[Segment]:
    s = ctx.settings
    template = s.prompt_format or ""
    names = {n for _, n, _, _ in string.Formatter().parse(template) if n}
    given = _text(row, s.field_input, required=False)
    if not given.strip() and s.no_input_format:
        template = s.no_input_format
    values = {
        "instruction": _text(row, s.field_instruction, required="instruction" in names),
        "input": given,
        "system": _system(row, s),
    }
    output = _text(row, s.field_output, required=True)
    return [Segment(template.format(**values), ctx.train_on_inputs), Segment(output, True)]


def _sharegpt(row: dict[str, Any], ctx: FormatContext) -> list[Segment]:
    s = ctx.settings
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
        raise RowError(key, f"must be an array of turns, got {_type_name(turns)}")
    if not turns:
        raise RowError(key, "conversation has no turns")
    messages: list[dict[str, str]] = []
    for i, turn in enumerate(turns):
        here = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise RowError(here, f"each turn must be an object, got {_type_name(turn)}")
        role_key = s.role_field or ("from" if "from" in turn else "role")
        content_key = s.content_field or ("value" if role_key == "from" else "content")
        role_raw = turn.get(role_key)
        if not isinstance(role_raw, str):
            raise RowError(
                f"{here}.{role_key}",
                "missing" if role_raw is None else f"must be a string, got {_type_name(role_raw)}",
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
                "missing" if content is None else f"must be a string, got {_type_name(content)}",
            )
        if role != "system" and not content.strip():
            raise RowError(f"{here}.{content_key}", f"empty {role} turn")
        if role == "system" and not content.strip():
            continue
        messages.append({"role": role, "content": content})
    if s.system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": s.system_prompt})
    trainable = [m["role"] in ctx.roles_to_train for m in messages]
    if not any(trainable):
        raise RowError(
            key,
            "conversation has no trainable turn (roles_to_train: "
            f"{', '.join(s.roles_to_train)}); every row needs at least one",
        )
    return _chat_segments(messages, trainable, ctx)


# --------------------------------------------------------------------------- chat masking


def _chat_segments(
    messages: list[dict[str, str]], trainable: list[bool], ctx: FormatContext
) -> list[Segment]:
    """Render with the chat template and mark each trainable turn's span.

    A turn's span starts where the template's generation prompt for it ends
    (render(messages[:i], add_generation_prompt=True)) and ends where its own
    rendering ends (render(messages[:i+1])), so headers are masked and the
    content plus end-of-turn marker are trained.
    """
    renderer = ctx.renderer
    assert renderer is not None, "chat formats need a renderer"
    try:
        full = renderer.render(messages, add_generation_prompt=False)
    except Exception as exc:  # jinja raise_exception, TemplateError, ...
        raise RowError(
            None, f"chat template {renderer.name} rejected the conversation: {exc}"
        ) from exc
    if ctx.train_on_inputs:
        return [Segment(full, True)]
    segments: list[Segment] = []
    cursor = 0
    for i in range(len(messages)):
        if not trainable[i]:
            continue
        start = _turn_start(renderer, messages, i, full, cursor)
        end = _turn_end(renderer, messages, i, full, start)
        if start > cursor:
            segments.append(Segment(full[cursor:start], False))
        segments.append(Segment(full[start:end], True))
        cursor = end
    if cursor < len(full):
        segments.append(Segment(full[cursor:], False))
    return segments


def _turn_start(
    renderer: Renderer, messages: list[dict[str, str]], i: int, full: str, cursor: int
) -> int:
    try:
        prefix = renderer.render(messages[:i], add_generation_prompt=True)
    except Exception:
        prefix = None
    if prefix is not None and len(prefix) >= cursor and full.startswith(prefix):
        return len(prefix)
    # Template not prefix-consistent here: fall back to finding the content itself.
    content = messages[i]["content"].strip()
    found = full.find(content, cursor)
    if found < 0:
        raise RowError(
            f"messages[{i}]",
            f"cannot locate this turn in the output of chat template {renderer.name}; "
            "use a template that renders turns verbatim (e.g. chatml)",
        )
    return found


def _turn_end(
    renderer: Renderer, messages: list[dict[str, str]], i: int, full: str, start: int
) -> int:
    upto = renderer.render(messages[: i + 1], add_generation_prompt=False)
    if full.startswith(upto):
        return max(len(upto), start)
    # The template appends something only at the very end of a conversation (e.g. an
    # EOS): the turn ends where `upto` and `full` part. The parting point may fall
    # inside the next header when both happen to start alike ("</s>" vs "<|user|>"),
    # so back off to the last safe boundary: after whitespace or an added token, or
    # right after the content.
    content = messages[i]["content"].strip()
    found = full.find(content, start)
    floor = found + len(content) if found >= 0 else start
    end = _common_prefix(upto, full)
    for p in range(end, floor, -1):
        if full[p - 1].isspace() or any(
            full.startswith(t, p - len(t)) for t in renderer.atomic_tokens
        ):
            return p
    return max(floor, start)


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
