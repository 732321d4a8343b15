"""Building blocks the config sections share: choice types, constants, the section base
class, the axolotl-name marker, and the checks on plain values.

Needs only pydantic: the operator imports the schema to validate FineTuneJobs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.fields import FieldInfo

AdapterType = Literal[
    "none",
    "lora",
    "qlora",
    "dora",
    "loha",
    "lokr",
    "ia3",
    "adalora",
    "oft",
    "vera",
    "boft",
    "prefix_tuning",
    "prompt_tuning",
    "p_tuning",
]
# A prompt format name: a built-in (alpaca, sharegpt, completion, custom) or one a plugin
# package registers (entry point group FORMATS_GROUP). Only the spelling is checked here: the
# operator's image does not carry the trainer image's plugins; `finetune validate` and the
# data pipeline look the name up where the formats are installed (finetune_runtime.data.registry).
FORMAT_NAME = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"
FORMATS_GROUP = "finetune.formats"


def _format_name(value: Any) -> Any:
    if isinstance(value, str) and not re.match(FORMAT_NAME, value):
        raise ValueError(
            f"{value!r} is not a format name: alpaca, sharegpt, completion, custom, or a "
            "plugin's name (letters, digits, '_', '-', '.'; starting with a letter)"
        )
    return value


DatasetFormat = Annotated[str, Field(pattern=FORMAT_NAME), BeforeValidator(_format_name)]
SchedulerType = Literal[
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "warmup_stable_decay",
]
OptimizerType = Literal[
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_bnb_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "sgd",
    "adafactor",
]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Kernels = Literal["auto", "liger", "torch", "none"]
DEEPSPEED_PRESETS = ("zero1", "zero2", "zero3", "zero2_offload", "zero3_offload")
ADAPTERS_USING_LORA_CONFIG = ("lora", "qlora", "dora")
# peft's prompt-learning methods: trained virtual tokens, not weight deltas, so they can be
# served with the base model but never merged into it.
PROMPT_LEARNING_ADAPTERS = ("prefix_tuning", "prompt_tuning", "p_tuning")
# The tokenizer attributes `special_tokens` may set (transformers' add_special_tokens keys).
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token")

PositiveInt = Annotated[int, Field(gt=0)]
# A place in a config: keys and list indices, e.g. ('datasets', 0, 'path').
Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Axolotl:
    """Field metadata: the flat axolotl key that sets this field (`Annotated[T, Axolotl(..)]`).

    `finetune_runtime.config.axolotl_keys` derives its key maps from these markers, so the
    schema states each axolotl name once, next to the field it sets.
    """

    key: str


def axolotl_key(field: FieldInfo) -> str | None:
    """The axolotl key marked on a field, or None."""
    return next((m.key for m in field.metadata if isinstance(m, Axolotl)), None)


class Section(BaseModel):
    """A config section: unknown keys are errors and defaults are validated too."""

    # No NaN/inf in typed fields: `.inf` passes `gt=0` and breaks the step arithmetic later.
    # Free-form dicts (deepspeed, lora.options) keep theirs through to_yaml (as .inf/.nan).
    model_config = ConfigDict(
        extra="forbid", validate_default=True, allow_inf_nan=False, ser_json_inf_nan="constants"
    )


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside a field's annotation (`X`, `X | None`, `list[X]`), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = model_in(arg)
        if found is not None:
            return found
    return None


def check_safe_path(value: str) -> str:
    """Refuse `..` components: output paths must not escape where they are pointed."""
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    if "\x00" in value:
        raise ValueError("must not contain NUL bytes")
    if ".." in PurePosixPath(value.replace("\\", "/")).parts:
        raise ValueError(f"{value!r} contains '..': path traversal is not allowed")
    return value


def unmergeable_reason(adapter: str) -> str | None:
    """Why an adapter of this type cannot be merged into its base model, or None."""
    if adapter in PROMPT_LEARNING_ADAPTERS:
        return (
            f"adapter {adapter!r} trains virtual tokens that are put before every input, not "
            "weight deltas, so it cannot be folded into the base model's weights: serve the "
            "adapter with its base model instead (`finetune generate CONFIG`, `finetune serve`)"
        )
    return None
