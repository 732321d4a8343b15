"""`format: qa`: reading-comprehension rows for finetune.

A row is {"question": ..., "answer": ..., "context": ... (optional)} and becomes

    Context: <context>          (only when the row has one)
    Question: <question>
    Answer: <answer>

The prompt (everything up to "Answer: ") is masked unless training.train_on_inputs is
on; the answer is trained. `system_prompt`, when the dataset sets one, opens every
prompt.
"""

from __future__ import annotations

from typing import Any

from finetune_runtime.config import DatasetSettings
from finetune_runtime.data.formats import FormatContext, Segment, text


class QA:
    """The object the entry point names; finetune instantiates it once, with no arguments."""

    def check_settings(self, settings: DatasetSettings) -> list[tuple[str, str]]:
        """Config problems found before any row is read, as (field, message)."""
        if settings.prompt_format is not None:
            return [
                (
                    "prompt_format",
                    "the qa format writes its own prompt; remove prompt_format (or use "
                    "format: custom for a template of your own)",
                )
            ]
        return []

    def segments(self, row: dict[str, Any], ctx: FormatContext) -> list[Segment]:
        """One row -> [prompt (masked), answer (trained)]. `text` raises RowError naming the
        field when a required one is missing, empty or not a string; finetune adds the file
        and line."""
        question = text(row, "question", required=True)
        answer = text(row, "answer", required=True)
        context = text(row, "context", required=False)
        system = ctx.settings.system_prompt
        prompt = f"{system}\n\n" if system else ""
        if context.strip():
            prompt += f"Context: {context.strip()}\n"
        prompt += f"Question: {question.strip()}\nAnswer: "
        return [Segment(prompt, ctx.train_on_inputs), Segment(answer.strip(), True)]

    def prompt_row(
        self, settings: DatasetSettings, prompt: str, input_text: str, response: str
    ) -> dict[str, Any]:
        """A row holding a question (and context) for `finetune generate`/`run --prompt`:
        the prompt they render is this row's, cut before the answer."""
        return {"question": prompt, "context": input_text, "answer": response}
