"""The adapter sections: `lora` (peft hyper-parameters) and `quantization` (bitsandbytes)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from finetune_runtime.config.base import Axolotl, PositiveInt, Section


class LoraSettings(Section):
    """Adapter hyper-parameters. `r`/`alpha`/`dropout` apply to the LoRA family;
    `target_modules` applies to every peft adapter."""

    r: Annotated[PositiveInt, Axolotl("lora_r")] = Field(
        8, description="Rank of the LoRA update matrices (> 0; default 8). axolotl: lora_r."
    )
    alpha: Annotated[float, Axolotl("lora_alpha")] = Field(
        16.0,
        gt=0,
        description="LoRA scaling numerator: updates are scaled by alpha / r (alpha / sqrt(r) "
        "with use_rslora); default 16. axolotl: lora_alpha.",
    )
    dropout: Annotated[float, Axolotl("lora_dropout")] = Field(
        0.05,
        ge=0,
        lt=1,
        description="Dropout probability on the adapter input, in [0, 1); default 0.05. "
        "axolotl: lora_dropout.",
    )
    target_modules: Annotated[list[str] | str, Axolotl("lora_target_modules")] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        description="Modules that get an adapter: a list of module names, a regex, or "
        "'all-linear'; default [q_proj, v_proj]. Applies to every peft adapter. "
        "axolotl: lora_target_modules (lora_target_linear: true means all-linear).",
    )
    modules_to_save: Annotated[list[str] | None, Axolotl("lora_modules_to_save")] = Field(
        None,
        description="Extra modules trained in full and saved with the adapter, e.g. "
        "[embed_tokens, lm_head] after adding tokens; default none. "
        "axolotl: lora_modules_to_save.",
    )
    use_rslora: Annotated[bool, Axolotl("peft_use_rslora")] = Field(
        False,
        description="Rank-stabilised LoRA: scale by alpha / sqrt(r) instead of alpha / r. "
        "axolotl: peft_use_rslora.",
    )
    fan_in_fan_out: Annotated[bool, Axolotl("lora_fan_in_fan_out")] = Field(
        False,
        description="Set for models that store linear weights transposed (GPT-2's Conv1D). "
        "axolotl: lora_fan_in_fan_out.",
    )
    bias: Literal["none", "all", "lora_only"] = Field(
        "none",
        description="Which biases are trained: none (default), all, or lora_only (only the "
        "biases of adapted modules).",
    )
    num_virtual_tokens: PositiveInt = Field(
        20,
        description="prefix_tuning, prompt_tuning, p_tuning: how many trained virtual tokens "
        "are put before every sequence (default 20); these adapters ignore r, alpha, dropout "
        "and target_modules.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra keyword arguments passed to the peft config class of the chosen "
        "adapter, e.g. {prompt_tuning_init: TEXT, prompt_tuning_init_text: ...} or "
        "{encoder_hidden_size: 128} for p_tuning; default {}.",
    )

    @field_validator("target_modules")
    @classmethod
    def _non_empty_targets(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("must name modules, a regex, or 'all-linear'")
        elif not value or any(not m.strip() for m in value):
            raise ValueError("must list at least one module name (or be 'all-linear')")
        return value


class QuantizationSettings(Section):
    """bitsandbytes quantization of the frozen base model (QLoRA when bits=4)."""

    bits: Literal[4, 8] = Field(
        4,
        description="Load the base model in 4-bit (QLoRA; default) or 8-bit. "
        "axolotl: load_in_4bit / load_in_8bit.",
    )
    type: Literal["nf4", "fp4"] = Field(
        "nf4",
        description="4-bit data type: nf4 (NormalFloat, default) or fp4. "
        "axolotl: bnb_config_kwargs.bnb_4bit_quant_type.",
    )
    double_quant: bool = Field(
        True,
        description="Also quantize the quantization constants (QLoRA's double quantization); "
        "default true. axolotl: bnb_config_kwargs.bnb_4bit_use_double_quant.",
    )
    block_size: Literal[32, 64, 128, 256, 512, 1024, 2048, 4096] = Field(
        64, description="4-bit quantization block size, in weights per scale; default 64."
    )
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="dtype of the de-quantized matmuls; auto (default) follows training.precision.",
    )
