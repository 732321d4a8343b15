"""Base model, tokenizer, quantization and peft adapters.

`base_model` may be a local directory, `builtin:NAME` (a tiny model built
locally, see `finetune_runtime.model.tiny`), an `s3://` prefix (fetched into the
cache) or a Hugging Face Hub id (only where the hub is reachable).

What runs where is recorded in docs/training.md; in short, every adapter type
in `config.AdapterType` trains on CPU, 4-bit (nf4/fp4, with or without double
quantization) and 8-bit bitsandbytes quantization train on CPU and GPU.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from finetune_runtime.errors import ModelError
from finetune_runtime.model.tiny import is_builtin, resolve_builtin

if TYPE_CHECKING:
    from finetune_runtime.config import FineTuneConfig, QuantizationSettings

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BNB_DEFAULT_BLOCKSIZE = 64  # what bitsandbytes' Linear4bit uses when nobody says otherwise


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


# --------------------------------------------------------------------------- quantization


def compute_dtype(quant: QuantizationSettings, precision: str) -> torch.dtype:
    if quant.compute_dtype != "auto":
        return COMPUTE_DTYPES[quant.compute_dtype]
    return DTYPES[precision]


def bnb_config(quant: QuantizationSettings, precision: str) -> Any:
    """`quantization` → transformers' BitsAndBytesConfig (block_size is applied separately)."""
    from transformers import BitsAndBytesConfig

    if quant.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=compute_dtype(quant, precision),
    )


@contextlib.contextmanager
def _bnb_4bit_blocksize(blocksize: int) -> Iterator[None]:
    """Quantize 4-bit weights with `blocksize` while a model loads.

    BitsAndBytesConfig has no block size; transformers builds each Params4bit
    from the placeholder Linear4bit's weight attributes (`blocksize` among
    them, default 64), so setting it on the placeholders is honoured when the
    real weights are quantized. `_check_blocksize` verifies the outcome.
    """
    import bitsandbytes as bnb

    if blocksize == BNB_DEFAULT_BLOCKSIZE:
        yield
        return
    original = bnb.nn.Linear4bit.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.weight.blocksize = blocksize

    bnb.nn.Linear4bit.__init__ = init  # type: ignore[method-assign]
    try:
        yield
    finally:
        bnb.nn.Linear4bit.__init__ = original  # type: ignore[method-assign]


def _check_blocksize(model: torch.nn.Module, blocksize: int) -> None:
    import bitsandbytes as bnb

    for name, module in model.named_modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        state = getattr(module.weight, "quant_state", None)
        if state is None or state.blocksize != blocksize:
            got = None if state is None else state.blocksize
            raise ModelError(
                f"quantization.block_size={blocksize} was not applied to {name} (got {got}); "
                "this bitsandbytes/transformers combination ignores it: use block_size 64"
            )
        if module.in_features % blocksize:
            # bitsandbytes' packed CPU inference kernel reshapes absmax per row and needs
            # whole blocks per row; the generic kernel handles any block size.
            module.support_avx512bf16_for_cpu = False


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
    dtype = torch.float32 if full_finetune else DTYPES[precision]
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": config.trust_remote_code}
    blocksize = BNB_DEFAULT_BLOCKSIZE
    if quant is not None:
        kwargs["quantization_config"] = bnb_config(quant, precision)
        kwargs["device_map"] = {"": device}
        if quant.bits == 4:
            blocksize = quant.block_size
    model: Any
    try:
        with _bnb_4bit_blocksize(blocksize):
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise _hub_error(source, "base_model", exc) from exc
    except (ValueError, RuntimeError, ImportError) as exc:
        raise ModelError(f"cannot load base_model {source!r}: {exc}") from exc
    if quant is not None and quant.bits == 4:
        _check_blocksize(model, blocksize)
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


# --------------------------------------------------------------------------- adapters


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
    import peft

    lora = config.lora
    adapter = config.adapter
    if adapter == "none":
        return None
    if config.is_prompt_learning:
        return prompt_learning_config(config)
    targets = _explicit_targets(config)
    common: dict[str, Any] = {
        "task_type": "CAUSAL_LM",
        "target_modules": targets,
        "modules_to_save": lora.modules_to_save,
    }
    options = dict(lora.options)
    kwargs: dict[str, Any]
    if adapter in ("lora", "qlora", "dora"):
        cls: Any = peft.LoraConfig
        kwargs = {
            "r": lora.r,
            "lora_alpha": lora.alpha,
            "lora_dropout": lora.dropout,
            "use_rslora": lora.use_rslora,
            "use_dora": adapter == "dora",
            "fan_in_fan_out": lora.fan_in_fan_out,
            "bias": lora.bias,
        }
    elif adapter == "adalora":
        cls = peft.AdaLoraConfig
        kwargs = {
            "target_r": lora.r,
            "init_r": options.pop("init_r", math.ceil(lora.r * 1.5)),
            "lora_alpha": lora.alpha,
            "lora_dropout": lora.dropout,
            "total_step": total_steps,
            "bias": lora.bias,
        }
    elif adapter == "loha":
        cls = peft.LoHaConfig
        kwargs = {"r": lora.r, "alpha": lora.alpha, "module_dropout": lora.dropout}
    elif adapter == "lokr":
        cls = peft.LoKrConfig
        kwargs = {"r": lora.r, "alpha": lora.alpha, "module_dropout": lora.dropout}
    elif adapter == "ia3":
        cls = peft.IA3Config
        if targets == "all-linear":
            # peft saves an all-linear IA3 adapter with full module paths as targets but short
            # feed-forward names, and then refuses to load it: name the layers explicitly.
            targets = common["target_modules"] = linear_layer_names(model)
        kwargs = {"feedforward_modules": _ia3_feedforward(model, targets)}
    elif adapter == "oft":
        cls = peft.OFTConfig
        kwargs = {"r": lora.r, "oft_block_size": 0, "module_dropout": lora.dropout}
    elif adapter == "boft":
        cls = peft.BOFTConfig
        kwargs = {"boft_block_size": 4, "boft_dropout": lora.dropout}
    elif adapter == "vera":
        cls = peft.VeraConfig
        kwargs = {"r": lora.r, "vera_dropout": lora.dropout}
    else:  # pragma: no cover - the schema's Literal lists every adapter above
        raise ModelError(f"adapter {adapter!r} is not supported")
    kwargs.update(options)
    try:
        return cls(**common, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"lora (adapter {adapter!r}): invalid adapter settings: {exc}") from exc


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


def save_weights(
    model: Any, directory: Path, tokenizer: Any = None, state_dict: dict | None = None
) -> None:
    """The adapter (peft) or full model as safetensors, plus the tokenizer."""
    model.save_pretrained(directory, state_dict=state_dict)  # safetensors by default
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
