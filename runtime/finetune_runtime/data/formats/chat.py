"""Chat templates: render a conversation and mark each trainable turn's span.

Rendering uses transformers' Jinja renderer (imported on first use); the rest is
string arithmetic on the rendered text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from finetune_runtime.data.formats.types import FormatContext, RowError, Segment


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


def chat_segments(
    messages: list[dict[str, str]], trainable: list[bool], ctx: FormatContext
) -> list[Segment]:
    """Render with the chat template and mark each trainable turn's span.

    A turn's span starts where the template's generation prompt for it ends
    (render(messages[:i], add_generation_prompt=True)) and ends where its own
    rendering ends (render(messages[:i+1])), so headers are masked and the
    content plus end-of-turn marker are trained.
    """
    renderer = ctx.renderer
    if renderer is None:
        raise RowError(None, "this format renders chat turns but has no chat template")
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
