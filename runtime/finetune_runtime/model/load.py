"""Where the base model comes from, its tokenizer, loading it, and saving weights.

`base_model` may be a local directory, `builtin:NAME` (a tiny model built
locally, see `finetune_runtime.model.tiny`), an `s3://` prefix (fetched into the
cache) or a Hugging Face Hub id (only where the hub is reachable).

Quantization lives in `model.quantize`, peft adapters in `model.adapters`. What runs
where is recorded in docs/training.md; in short, every adapter type in
`config.AdapterType` trains on CPU, 4-bit (nf4/fp4, with or without double
quantization) and 8-bit bitsandbytes quantization train on CPU and GPU.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from finetune_runtime.errors import ModelError
from finetune_runtime.model import quantize as quantization
from finetune_runtime.model.tiny import is_builtin, resolve_builtin

if TYPE_CHECKING:
    from finetune_runtime.config import FineTuneConfig

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------- where from


def resolve_model_source(name: str, base_dir: Path | None = None) -> str:
    """A local directory for `name`, or the hub id itself when it is not local.

    Relative paths are tried against `base_dir` (the config file's directory)
    first, then the working directory.
    """
    if is_builtin(name):
        return str(resolve_builtin(name))
    if name.startswith("s3://"):
        from finetune_runtime.storage.fetch import resolve_uri

        return str(resolve_uri(name))
    path = Path(name).expanduser()
    candidates = [path] if path.is_absolute() or base_dir is None else [base_dir / path, path]
    for candidate in candidates:
        if candidate.is_dir():
            if not (candidate / "config.json").is_file():
                raise ModelError(
                    f"base_model {name!r}: {candidate} has no config.json; point base_model at a "
                    "Hugging Face model directory (config.json + *.safetensors)"
                )
            return str(candidate.resolve())
        if candidate.exists():
            raise ModelError(f"base_model {name!r}: {candidate} is a file, expected a directory")
    if name.startswith(("/", "./", "../", "~")):
        raise ModelError(f"base_model {name!r}: directory not found")
    return name  # a hub id


def _hub_error(name: str, what: str, exc: Exception) -> ModelError:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub could not be reached"
    detail = " ".join(str(exc).split())
    return ModelError(
        f"cannot load {what} {name!r}: it is not a local directory and {why} ({detail}). "
        "Point base_model at a local model directory, an s3:// URI fetched with "
        "`finetune fetch`, or builtin:tiny-llama for a local smoke test"
    )


# --------------------------------------------------------------------------- tokenizer


def load_tokenizer(config: FineTuneConfig, source: str, base_dir: Path | None = None) -> Any:
    """The config's tokenizer (or the model's), with a pad token and `special_tokens` applied."""
    from transformers import AutoTokenizer

    name = resolve_model_source(config.tokenizer, base_dir) if config.tokenizer else source
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=config.trust_remote_code)
    except OSError as exc:
        raise _hub_error(name, "tokenizer", exc) from exc
    # The schema allows only SPECIAL_TOKEN_KEYS here (finetune_runtime.config).
    special: dict[str, Any] = dict(config.special_tokens)
    if special:
        tokenizer.add_special_tokens(special)
    if config.added_tokens:
        from tokenizers import AddedToken

        # As axolotl adds its `tokens`: matched verbatim, spaces around them left alone.
        tokenizer.add_tokens(
            [
                AddedToken(token, rstrip=False, lstrip=False, normalized=False)
                for token in config.added_tokens
            ]
        )
    if tokenizer.pad_token is None:
        # Padded positions are masked and their labels ignored, so any token will do.
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
        else:
            tokenizer.pad_token = fallback
    return tokenizer


# --------------------------------------------------------------------------- base model


def load_base_model(
    config: FineTuneConfig,
    source: str,
    *,
    device: torch.device,
    precision: str,
    quantize: bool = True,
) -> Any:
    """The base causal LM on `device`.

    Frozen base weights use the training precision; full fine-tunes keep fp32
    master weights (mixed precision comes from autocast). Quantized models are
    prepared for k-bit training (norms upcast, inputs require grad).
    """
    from transformers import AutoModelForCausalLM

    from finetune_runtime.storage.integrity import verify_weights

    if Path(source).is_dir():  # one of our outputs (merged, model) carries a manifest
        verify_weights(source, required=False)
    quant = config.quantization if quantize else None
    full_finetune = config.adapter == "none"
    kwargs: dict[str, Any] = {
        "dtype": torch.float32 if full_finetune else DTYPES[precision],
        "trust_remote_code": config.trust_remote_code,
        **quantization.loading_kwargs(quant, DTYPES[precision], device),
    }
    blocksize = quantization.block_size(quant)
    model: Any
    try:
        with quantization.bnb_4bit_blocksize(blocksize):
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise _hub_error(source, "base_model", exc) from exc
    except (ValueError, RuntimeError, ImportError) as exc:
        raise ModelError(f"cannot load base_model {source!r}: {exc}") from exc
    if quant is not None and quant.bits == 4:
        quantization.check_blocksize(model, blocksize)
    if quant is None:
        model.to(device)
    model.config.use_cache = False  # training never uses the KV cache
    gc_kwargs = {"use_reentrant": False}
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=config.training.gradient_checkpointing,
            gradient_checkpointing_kwargs=gc_kwargs,
        )
    elif config.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
    return model


def fit_embeddings(model: Any, tokenizer: Any) -> None:
    """Grow the embeddings when the tokenizer gained tokens (special_tokens, a pad token)."""
    size = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > size:
        model.resize_token_embeddings(len(tokenizer))
        log.warning(
            "added %d token(s) to the vocabulary; their embeddings start untrained: with an "
            "adapter, list embed_tokens and lm_head in lora.modules_to_save to train them",
            len(tokenizer) - size,
        )


def save_weights(
    model: Any, directory: Path, tokenizer: Any = None, state_dict: dict | None = None
) -> None:
    """The adapter (peft) or full model as safetensors, plus the tokenizer."""
    model.save_pretrained(directory, state_dict=state_dict)  # safetensors by default
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
