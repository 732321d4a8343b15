"""The format interface: what a prompt format receives, returns and may raise.

A prompt format turns one raw row (a JSON object) into text segments, each marked
trained or masked; tokenization happens later, segment by segment, so the boundary
between prompt and response is exact in tokens too. Built-in and plugin formats
implement the same `PromptFormat` protocol and are found the same way (entry points
in the `finetune.formats` group; finetune_runtime.data.registry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from finetune_runtime.config import DatasetSettings

if TYPE_CHECKING:
    from finetune_runtime.data.formats.chat import Renderer

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
    """A row is unusable: `field` is the key (or `messages[2].role`) at fault.

    Formats raise it for bad rows; the pipeline adds the file and line.
    """

    def __init__(self, field: str | None, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


@dataclass(frozen=True)
class Segment:
    """A piece of a row's text; `train` marks whether its tokens carry labels."""

    text: str
    train: bool


@dataclass
class FormatContext:
    """Everything a format needs besides the row."""

    settings: DatasetSettings
    train_on_inputs: bool
    renderer: Renderer | None = None  # set for chat-style formats

    @property
    def roles_to_train(self) -> set[str]:
        return {ROLE_MAP.get(r, r) for r in self.settings.roles_to_train}


class PromptFormat(Protocol):
    """What a format implements (a module, a class or an instance with these attributes).

    Required:
      segments(row, ctx) -> list[Segment]
          `row` is always a dict (other JSON values are refused before the call). Raise
          RowError(field, message) for a row that cannot be used.
    Optional (looked up with getattr by finetune_runtime.data.formats):
      needs_chat_template(settings) -> bool
          True: `ctx.renderer` is set (the tokenizer's or the configured chat template),
          and formats.chat_segments(messages, trainable, ctx) masks turns with it.
      check_settings(settings) -> list[tuple[str, str]]
          (field, message) for each config problem found before any row is read, e.g.
          ("prompt_format", "unknown placeholder {x}").
      prompt_row(settings, prompt, input_text, response) -> dict
          A row of this format with `prompt` (and `input_text`) as the user's part and
          `response` as the answer, for `finetune generate`/`run` to render a prompt the
          way training rendered them.
    """

    def segments(self, row: dict[str, Any], ctx: FormatContext) -> list[Segment]: ...
