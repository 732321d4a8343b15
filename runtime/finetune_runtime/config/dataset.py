"""One `datasets[]` entry: where the rows come from and how a row becomes a prompt.

`prompt_template_problem` is the check of a custom prompt template: the schema's rules
apply it (so `finetune validate` and the operator refuse a bad template) and the data
pipeline applies the same function before it reads a row.
"""

from __future__ import annotations

import string
from typing import Annotated, Literal

from pydantic import Field, field_validator

from finetune_runtime.config.base import Axolotl, DatasetFormat, Section

CUSTOM_PLACEHOLDERS = {"instruction", "input", "system"}


class Splits(Section):
    """How a dataset is split. `validation` is a fraction (<1) or a row count (>=1)."""

    train: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Optional fraction of rows to train on; with it, train + validation "
        "must add up to 1.",
    )
    validation: float = Field(
        0.0,
        ge=0,
        description="Rows held out for evaluation: a fraction below 1 (0.1) or a whole "
        "number of rows (200); default 0 (no validation split). The split is deterministic "
        "for a given seed. axolotl: val_set_size (applied to every dataset).",
    )


class DatasetSettings(Section):
    """One dataset: a local file or folder, an `s3://` object or prefix, or a hub dataset id."""

    path: str = Field(
        description="A local .json/.jsonl/.parquet/.csv/.arrow file or folder, a save_to_disk "
        "folder, an s3:// object or prefix, or a Hugging Face hub dataset id (from the local "
        "cache when HF_HUB_OFFLINE=1). Relative paths are relative to the config file."
    )
    format: DatasetFormat | None = Field(
        None,
        description="alpaca, sharegpt, completion, custom, or a format a plugin package "
        "registers (entry point group finetune.formats, installed in the trainer image); "
        "omitted: detected from the first row (conversations/messages: sharegpt; text alone: "
        "completion; else alpaca). axolotl: type (alpaca, alpaca:chat, sharegpt, "
        "chat_template, completion, a mapping for custom, or an installed plugin's name).",
    )
    name: str | None = Field(
        None, description="Dataset configuration name (load_dataset's `name`), for hub datasets."
    )
    split: str | None = Field(
        None,
        description="Which split to read from a hub dataset or a DatasetDict folder; "
        "default 'train' (or the only split there is).",
    )
    data_files: str | list[str] | dict[str, str | list[str]] | None = Field(
        None,
        description="Files inside a hub dataset or a local folder to read (load_dataset's "
        "`data_files`): a path, a list, or {split: files}; default all.",
    )
    revision: str | None = Field(None, description="Hub dataset revision: a branch, tag or commit.")
    splits: Splits = Field(
        default_factory=Splits,
        description="Train/validation split of this dataset; default: no validation rows.",
    )
    prompt_style: Literal["alpaca", "chat"] = Field(
        "alpaca",
        description="alpaca format only: alpaca (default; the classic 'Below is an "
        "instruction...' template) or chat (user/assistant turns through the chat template).",
    )
    field_messages: Annotated[str | None, Axolotl("field_messages")] = Field(
        None,
        description="sharegpt: key holding the turns; default 'conversations' or 'messages'.",
    )
    role_field: Annotated[str | None, Axolotl("message_field_role")] = Field(
        None,
        description="sharegpt: key holding a turn's role; default 'from' or 'role'. "
        "axolotl: message_field_role (or message_property_mappings.role).",
    )
    content_field: Annotated[str | None, Axolotl("message_field_content")] = Field(
        None,
        description="sharegpt: key holding a turn's text; default 'value' (with 'from') or "
        "'content'. axolotl: message_field_content (or message_property_mappings.content).",
    )
    roles_to_train: Annotated[list[str], Axolotl("roles_to_train")] = Field(
        default_factory=lambda: ["assistant"],
        description="sharegpt: roles whose turns are trained (the others are masked out of "
        "the loss); default [assistant]. gpt/model count as assistant, human as user.",
    )
    chat_template: Annotated[str | None, Axolotl("chat_template")] = Field(
        None,
        description="This dataset's chat template (a bundled name or Jinja text); default: "
        "the top-level chat_template.",
    )
    field_text: Annotated[str, Axolotl("field")] = Field(
        "text", description="completion: key holding the raw text; default 'text'. axolotl: field."
    )
    field_instruction: str = Field(
        "instruction", description="alpaca / custom: key holding the instruction."
    )
    field_input: str = Field(
        "input", description="alpaca / custom: key holding the optional input (context)."
    )
    field_output: str = Field(
        "output", description="alpaca / custom: key holding the response (always trained)."
    )
    field_system: Annotated[str | None, Axolotl("field_system")] = Field(
        None, description="alpaca / custom: key holding a per-row system prompt; default none."
    )
    system_prompt: Annotated[str | None, Axolotl("system_prompt")] = Field(
        None, description="System prompt for every row that has none of its own."
    )
    prompt_format: str | None = Field(
        None,
        description="custom (required there): the prompt template with {instruction}, {input} "
        "and {system} placeholders (literal braces as {{ and }}); the output field is "
        "appended as the response. axolotl: type.format.",
    )
    no_input_format: str | None = Field(
        None,
        description="custom: the prompt template used when a row's input is empty; default "
        "prompt_format. axolotl: type.no_input_format.",
    )

    @field_validator("path")
    @classmethod
    def _path_given(cls, value: str) -> str:
        if not value or not value.strip():
            raise ValueError("dataset path is empty: give a .json/.jsonl file or an s3:// URI")
        return value.strip()


def prompt_template_problem(template: str) -> str | None:
    """What is wrong with a custom prompt template, or None when it renders any row."""
    try:
        fields = [(n, c, f) for _, n, f, c in string.Formatter().parse(template) if n is not None]
    except ValueError as exc:
        return f"invalid template ({exc}); write literal braces as {{{{ and }}}}"
    # `{instruction:d}`, `{input!x}` fail per row; `{instruction:>9999999999}` exhausts
    # memory; `{instruction:{input}}` takes its format spec from the data.
    fancy = sorted(
        {
            "{" + n + (f"!{c}" if c else "") + (f":{f}" if f else "") + "}"
            for n, c, f in fields
            if c or f
        }
    )
    if fancy:
        return (
            f"placeholders take no conversion or format spec: "
            f"{', '.join(fancy)}; write {{instruction}}, {{input}} or {{system}}"
        )
    unknown = sorted({n for n, _, _ in fields} - CUSTOM_PLACEHOLDERS)
    if unknown:
        listed = ", ".join("{" + n + "}" for n in unknown)
        return (
            f"unknown placeholder(s) {listed}; use {{instruction}}, "
            "{input} and {system} (literal braces as {{ and }})"
        )
    return None


def template_problems(settings: DatasetSettings) -> list[tuple[str, str]]:
    """(key, problem) for each bad prompt template of a custom-format dataset."""
    if settings.format != "custom":
        return []
    found = []
    for key in ("prompt_format", "no_input_format"):
        template = getattr(settings, key)
        problem = prompt_template_problem(template) if template is not None else None
        if problem is not None:
            found.append((key, problem))
    return found
