"""peft adapters: the peft config for each `adapter` type (LoRA family, AdaLoRA, LoHa,
LoKr, IA3, OFT, BOFT, VeRA, prompt learning), applying it, and AdaLoRA's step hook."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from finetune_runtime.errors import ModelError

if TYPE_CHECKING:
    from finetune_runtime.config import FineTuneConfig, LoraSettings


def _explicit_targets(config: FineTuneConfig) -> list[str] | str | None:
    """The user's target_modules, or None to let peft pick per adapter and architecture."""
    if "target_modules" not in config.lora.model_fields_set and config.adapter not in (
        "lora",
        "qlora",
        "dora",
    ):
        return None
    return config.lora.target_modules


def peft_config(config: FineTuneConfig, model: Any, total_steps: int) -> Any:
    """The peft config for `config.adapter` (None for a full fine-tune)."""
    adapter = config.adapter
    if adapter == "none":
        return None
    if config.is_prompt_learning:
        return prompt_learning_config(config)
    targets = _explicit_targets(config)
    if adapter == "ia3" and targets == "all-linear":
        # peft saves an all-linear IA3 adapter with full module paths as targets but short
        # feed-forward names, and then refuses to load it: name the layers explicitly.
        targets = linear_layer_names(model)
    common: dict[str, Any] = {
        "task_type": "CAUSAL_LM",
        "target_modules": targets,
        "modules_to_save": config.lora.modules_to_save,
    }
    options = dict(config.lora.options)
    cls, kwargs = _adapter_settings(adapter, config.lora, options, total_steps, model, targets)
    kwargs.update(options)
    try:
        return cls(**common, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"lora (adapter {adapter!r}): invalid adapter settings: {exc}") from exc


def _adapter_settings(
    adapter: str,
    lora: LoraSettings,
    options: dict[str, Any],
    total_steps: int,
    model: Any,
    targets: list[str] | str | None,
) -> tuple[Any, dict[str, Any]]:
    """(peft config class, its adapter-specific arguments); AdaLoRA takes `init_r`
    out of `options`."""
    import peft

    if adapter in ("lora", "qlora", "dora"):
        return peft.LoraConfig, {
            "r": lora.r,
            "lora_alpha": lora.alpha,
            "lora_dropout": lora.dropout,
            "use_rslora": lora.use_rslora,
            "use_dora": adapter == "dora",
            "fan_in_fan_out": lora.fan_in_fan_out,
            "bias": lora.bias,
        }
    if adapter == "adalora":
        return peft.AdaLoraConfig, {
            "target_r": lora.r,
            "init_r": options.pop("init_r", math.ceil(lora.r * 1.5)),
            "lora_alpha": lora.alpha,
            "lora_dropout": lora.dropout,
            "total_step": total_steps,
            "bias": lora.bias,
        }
    if adapter == "loha":
        return peft.LoHaConfig, {"r": lora.r, "alpha": lora.alpha, "module_dropout": lora.dropout}
    if adapter == "lokr":
        return peft.LoKrConfig, {"r": lora.r, "alpha": lora.alpha, "module_dropout": lora.dropout}
    if adapter == "ia3":
        return peft.IA3Config, {"feedforward_modules": _ia3_feedforward(model, targets)}
    if adapter == "oft":
        return peft.OFTConfig, {"r": lora.r, "oft_block_size": 0, "module_dropout": lora.dropout}
    if adapter == "boft":
        return peft.BOFTConfig, {"boft_block_size": 4, "boft_dropout": lora.dropout}
    if adapter == "vera":
        return peft.VeraConfig, {"r": lora.r, "vera_dropout": lora.dropout}
    # The schema's Literal lists every adapter above.
    raise ModelError(f"adapter {adapter!r} is not supported")  # pragma: no cover


PROMPT_LEARNING_CLASSES = {
    "prefix_tuning": "PrefixTuningConfig",
    "prompt_tuning": "PromptTuningConfig",
    "p_tuning": "PromptEncoderConfig",
}


def prompt_learning_config(config: FineTuneConfig) -> Any:
    """peft's prefix tuning, prompt tuning or P-tuning: `lora.num_virtual_tokens` trained
    tokens before every sequence; `lora.options` reaches the peft config (for example
    prompt_tuning_init: TEXT, encoder_hidden_size). LoRA's r/alpha/targets do not apply."""
    import peft

    cls = getattr(peft, PROMPT_LEARNING_CLASSES[config.adapter])
    kwargs: dict[str, Any] = {
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": config.lora.num_virtual_tokens,
    }
    if config.lora.modules_to_save:
        kwargs["modules_to_save"] = config.lora.modules_to_save
    kwargs.update(config.lora.options)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ModelError(
            f"lora (adapter {config.adapter!r}): invalid adapter settings: {exc}"
        ) from exc


def linear_layer_names(model: Any) -> list[str]:
    """Short names of the linear layers an 'all-linear' adapter targets (not the LM head)."""
    output = model.get_output_embeddings()
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not output
    }
    return sorted(names)


def _ia3_feedforward(model: Any, targets: list[str] | str | None) -> list[str] | None:
    """IA3 scales inputs of feed-forward layers; they must be a subset of the targets."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING

    if not isinstance(targets, list):
        return None  # peft's own defaults (None) or all-linear/regex: no feed-forward split
    known = TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(model.config.model_type, [])
    # An empty list, not None: None makes peft fill in its default feed-forward layers,
    # which attention-only targets do not contain, and the saved adapter then cannot be
    # loaded (or merged) again.
    return [t for t in targets if t in known]


def apply_adapter(config: FineTuneConfig, model: Any, total_steps: int) -> Any:
    """Wrap `model` with the configured peft adapter (or unfreeze it for a full fine-tune)."""
    import peft

    cfg = peft_config(config, model, total_steps)
    if cfg is None:
        model.requires_grad_(True)
        return model
    try:
        wrapped = peft.get_peft_model(model, cfg)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ModelError(
            f"cannot apply adapter {config.adapter!r} to {type(model).__name__}: {exc}; check "
            "lora.target_modules (module names, a regex, or 'all-linear') and lora.options"
        ) from exc
    return wrapped


def adapter_step_hook(model: Any, start_step: int) -> Any:
    """A post-optimizer-step hook some adapters need (AdaLoRA's rank reallocation), or None.

    It runs after optimizer.step() and before zero_grad(), as AdaLoRA requires.
    """
    import peft

    if not isinstance(getattr(model, "peft_config", {}).get("default"), peft.AdaLoraConfig):
        return None
    step = start_step

    def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
        nonlocal step
        step += 1
        model.base_model.update_and_allocate(step)

    return hook


def trainable_summary(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
