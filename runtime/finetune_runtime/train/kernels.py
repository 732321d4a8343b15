"""`training.kernels`: which implementation of the LM head + loss (and, with liger, the
norm/rope/MLP kernels) a training run uses.

- `torch`: the model's forward is replaced, on this model instance only, by one that
  runs the decoder and then `finetune_runtime.train.lm_loss.causal_lm_loss` (LM head
  at labelled positions only, chunked cross-entropy). Without labels (generation) the
  stock forward runs unchanged.
- `liger`: liger-kernel's own instance patch (fused linear cross-entropy, RMSNorm,
  RoPE, SwiGLU). Triton kernels: CUDA only.
- `none`: the model's own forward.
- `auto`: liger on CUDA when it is importable, else torch.

Only architectures whose forward is exactly "decoder → lm_head → causal-LM loss" get
the torch path (no logit soft-capping or scaling, no auxiliary losses); others keep
their own forward, and the log says so.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from finetune_runtime.errors import ModelError
from finetune_runtime.train.lm_loss import causal_lm_loss

log = logging.getLogger(__name__)

# model_type values whose *ForCausalLM.forward is the plain decoder → head → loss.
PLAIN_CAUSAL_LM = ("llama", "mistral", "qwen2", "qwen3", "phi3")
LOGIT_TWEAKS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def decide_kernels(requested: str, device_type: str, *, liger_installed: bool) -> str:
    """The kernels to use: 'liger', 'torch' or 'none'. Raises ModelError for liger off CUDA."""
    if requested == "auto":
        return "liger" if device_type == "cuda" and liger_installed else "torch"
    if requested == "liger":
        if device_type != "cuda":
            raise ModelError(
                f"training.kernels: liger needs a CUDA GPU (liger-kernel is Triton), but this "
                f"run is on {device_type}: use kernels: torch (or auto) here"
            )
        if not liger_installed:
            raise ModelError(
                "training.kernels: liger is set but liger-kernel is not installed: "
                "pip install liger-kernel, or use kernels: torch"
            )
    if requested not in ("liger", "torch", "none"):
        raise ModelError(f"training.kernels: unknown value {requested!r}")
    return requested


def supports_labelled_head(model: Any) -> str | None:
    """None when `model` can take the torch path, else why not."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in PLAIN_CAUSAL_LM:
        return f"model type {model_type!r} is not one of {', '.join(PLAIN_CAUSAL_LM)}"
    tweaks = [k for k in LOGIT_TWEAKS if getattr(config, k, None) not in (None, 1, 1.0)]
    if tweaks:
        return f"the model transforms its logits ({', '.join(tweaks)})"
    if not callable(getattr(model, "get_decoder", None)):
        return "the model exposes no decoder"
    return None


def install_labelled_head(model: Any) -> None:
    """Give this HF causal LM instance the labelled-only, chunked loss forward."""
    stock = model.forward

    def forward(
        input_ids: Any = None,
        attention_mask: Any = None,
        position_ids: Any = None,
        labels: Any = None,
        num_items_in_batch: Any = None,
        **kwargs: Any,
    ) -> Any:
        from transformers.modeling_outputs import CausalLMOutputWithPast

        if labels is None or kwargs.get("output_hidden_states") or kwargs.get("use_cache"):
            return stock(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                labels=labels,
                num_items_in_batch=num_items_in_batch,
                **kwargs,
            )
        kwargs.pop("logits_to_keep", None)
        outputs = model.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        )
        loss = causal_lm_loss(
            outputs.last_hidden_state,
            labels,
            model.get_output_embeddings(),
            int(model.config.vocab_size),
            num_items_in_batch,
        )
        return CausalLMOutputWithPast(loss=loss, logits=None)

    model.forward = forward


def apply_liger(model: Any) -> None:
    """liger-kernel's patch of this model instance (CUDA only; cannot run on this CPU box)."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model)


def apply_kernels(model: Any, requested: str, device_type: str) -> str:
    """Apply `training.kernels` to the HF model (before peft wraps it); returns what ran."""
    chosen = decide_kernels(requested, device_type, liger_installed=liger_available())
    if chosen == "liger":
        apply_liger(model)
    elif chosen == "torch":
        why_not = supports_labelled_head(model)
        if why_not is not None:
            log.info("kernels: the model's own forward (%s)", why_not)
            return "none"
        install_labelled_head(model)
    log.info("kernels: %s", chosen)
    return chosen
