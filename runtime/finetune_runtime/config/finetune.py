"""`FineTuneConfig`: a complete fine-tuning run, the root of the schema."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator

from finetune_runtime.config.adapter import LoraSettings, QuantizationSettings
from finetune_runtime.config.base import (
    ADAPTERS_USING_LORA_CONFIG,
    DEEPSPEED_PRESETS,
    PROMPT_LEARNING_ADAPTERS,
    SPECIAL_TOKEN_KEYS,
    AdapterType,
    Axolotl,
    PositiveInt,
    Section,
    check_safe_path,
)
from finetune_runtime.config.dataset import DatasetSettings
from finetune_runtime.config.tracking import TrackingSettings
from finetune_runtime.config.training import TrainingSettings


class FineTuneConfig(Section):
    """A complete fine-tuning run."""

    base_model: str = Field(
        description="The model to fine-tune: a local Hugging Face model directory, an "
        "s3://bucket/prefix holding one (fetched into the cache), builtin:NAME (tiny-llama, "
        "small-llama, mid-llama: built locally) or a hub id."
    )
    tokenizer: Annotated[str | None, Axolotl("tokenizer_config")] = Field(
        None,
        description="A different tokenizer location (same forms as base_model); default the "
        "model's own. axolotl: tokenizer_config.",
    )
    trust_remote_code: bool = Field(
        False, description="Allow model and tokenizer code shipped with the weights to run."
    )
    adapter: AdapterType = Field(
        "lora",
        description="none (full fine-tune), lora (default), qlora (needs 4-bit quantization), "
        "dora, another peft adapter (loha, lokr, ia3, adalora, oft, vera, boft), or a "
        "prompt-learning method (prefix_tuning, prompt_tuning, p_tuning: served with the base "
        "model, never merged). axolotl: adapter (+ peft_use_dora).",
    )
    lora: LoraSettings = Field(
        default_factory=LoraSettings, description="Adapter hyper-parameters (lora_* in axolotl)."
    )
    quantization: QuantizationSettings | None = Field(
        None,
        description="Load the frozen base model quantized with bitsandbytes (QLoRA); default "
        "none. axolotl: load_in_4bit / load_in_8bit, bnb_config_kwargs.",
    )
    datasets: list[DatasetSettings] = Field(
        min_length=1,
        description="One or more datasets, concatenated (at least one). A single mapping "
        "under `dataset:` is accepted too.",
    )
    chat_template: str | None = Field(
        None,
        description="Chat template for chat-style datasets that set none: a bundled name "
        "(chatml, llama3, ...), tokenizer_default (default), "
        "tokenizer_default_fallback_NAME, or Jinja text.",
    )
    special_tokens: dict[str, str] = Field(
        default_factory=dict,
        description="Tokens to set on the tokenizer, e.g. {pad_token: '<pad>'}; keys: "
        + ", ".join(SPECIAL_TOKEN_KEYS)
        + ". A token new to the vocabulary grows the embeddings.",
    )
    added_tokens: Annotated[list[str], Axolotl("tokens")] = Field(
        default_factory=list,
        description="New tokens added to the tokenizer (after special_tokens), each kept whole "
        "when tokenizing; the embeddings grow to fit. With a LoRA-family adapter, "
        "lora.modules_to_save must name the embedding layers. axolotl: tokens.",
    )
    training: TrainingSettings = Field(
        default_factory=TrainingSettings,
        description="Optimisation, schedule, checkpoints, evaluation and sequence handling.",
    )
    deepspeed: str | dict[str, Any] | None = Field(
        None,
        description="zero1|zero2|zero3|zero2_offload|zero3_offload, a JSON path, or a dict; "
        "default none (multi-GPU jobs then use DDP).",
    )
    tracking: TrackingSettings = Field(
        default_factory=TrackingSettings,
        description="Experiment trackers (W&B, MLflow, TensorBoard); default all off.",
    )
    output_dir: str = Field(
        "./outputs",
        description="Where checkpoints and the final adapter/model are written (no '..'); "
        "default ./outputs. In a FineTuneJob it is on the checkpoint volume.",
    )
    seed: int = Field(
        42,
        description="Seeds the data split, shuffling and the initialisation of new weights; "
        "default 42.",
    )
    dataset_prepared_path: str | None = Field(
        None,
        description="Folder for the tokenized, packed dataset cache (`finetune preprocess`); "
        "default: output_dir/prepared_data. Each cache lives in a subfolder named by a hash "
        "of everything that affects it.",
    )
    dataset_processes: Annotated[PositiveInt | None, Axolotl("dataset_num_proc")] = Field(
        None,
        description="Processes that tokenize while preparing the data; default: every CPU core. "
        "axolotl: dataset_num_proc (or this name, its older one).",
    )

    @field_validator("base_model")
    @classmethod
    def _base_model_given(cls, value: str) -> str:
        if not value or not value.strip():
            raise ValueError("base_model is empty: name a local path, s3:// URI or hub model id")
        return value.strip()

    @field_validator("special_tokens")
    @classmethod
    def _known_special_tokens(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(SPECIAL_TOKEN_KEYS))
        if unknown:
            raise ValueError(
                f"unknown key(s) {', '.join(unknown)}; use {', '.join(SPECIAL_TOKEN_KEYS)}"
            )
        return value

    @field_validator("output_dir")
    @classmethod
    def _no_traversal(cls, value: str) -> str:
        return check_safe_path(value)

    @field_validator("dataset_prepared_path")
    @classmethod
    def _prepared_no_traversal(cls, value: str | None) -> str | None:
        return check_safe_path(value) if value is not None else None

    @field_validator("deepspeed")
    @classmethod
    def _deepspeed_form(cls, value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if isinstance(value, str):
            value = value.strip()
            if not value:
                return None
            if value not in DEEPSPEED_PRESETS and not value.endswith(".json"):
                raise ValueError(
                    f"{value!r} is neither a preset ({', '.join(DEEPSPEED_PRESETS)}) "
                    "nor a path to a .json DeepSpeed config"
                )
        return value

    # Derived views the runtime uses, so no caller re-derives them differently.
    @property
    def uses_lora_family(self) -> bool:
        return self.adapter in ADAPTERS_USING_LORA_CONFIG

    @property
    def is_prompt_learning(self) -> bool:
        return self.adapter in PROMPT_LEARNING_ADAPTERS

    @property
    def is_quantized(self) -> bool:
        return self.quantization is not None

    def to_yaml(self) -> str:
        """The canonical form as YAML (what `finetune init` writes and the operator mounts)."""
        import yaml

        data = self.model_dump(mode="json", exclude_defaults=False)
        return yaml.safe_dump(data, sort_keys=False)
