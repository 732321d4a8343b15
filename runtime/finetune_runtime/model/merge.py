"""Fold a trained adapter into its base model: one ordinary model directory.

The base is loaded unquantized (even after QLoRA: merging into 4-bit weights
would round the update away), the adapter applied with peft and
`merge_and_unload`ed, and the result saved as safetensors with the tokenizer.

Integrity: the adapter's SHA-256 manifest is verified first; its recorded identity
must name this base model and architecture, and a base that already contains this
adapter (a merged output used as base_model) is refused. The merged directory gets
its own manifest recording the adapters folded into it.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from finetune_runtime import contract
from finetune_runtime.config import FineTuneConfig, check_safe_path, unmergeable_reason
from finetune_runtime.errors import ConfigError, IntegrityError, ModelError
from finetune_runtime.model.load import DTYPES
from finetune_runtime.storage.checkpoint_dirs import replace_dir
from finetune_runtime.storage.integrity import (
    architecture_of,
    identity_of,
    manifest_id,
    verify_weights,
    write_manifest,
)

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
MERGED_DIR = contract.OUTPUT_MERGED


def check_mergeable(config: FineTuneConfig) -> None:
    """Refuse a config whose adapter cannot be merged: the runtime's one spelling of
    "merge needs an adapter" (a full fine-tune has none; prompt learning has no weights
    to fold into the base)."""
    if config.adapter == contract.FULL_FINETUNE:
        raise ModelError(
            "nothing to merge: adapter is 'none' (a full fine-tune), whose weights are already "
            f"a complete model in {Path(config.output_dir) / contract.OUTPUT_MODEL}"
        )
    reason = unmergeable_reason(config.adapter)
    if reason is not None:
        raise ModelError(f"cannot merge: {reason}")


def find_adapter(config: FineTuneConfig, adapter: str | Path | None) -> Path:
    """The adapter directory: given (an adapter dir or a checkpoint holding one), else
    output_dir/adapter."""
    check_mergeable(config)
    output_dir = Path(config.output_dir)
    path = Path(adapter) if adapter else output_dir / contract.OUTPUT_ADAPTER
    if adapter and not path.is_absolute() and not path.exists() and (output_dir / path).exists():
        path = output_dir / path  # `--adapter checkpoint-40` means the one in output_dir
    nested = path / contract.OUTPUT_ADAPTER  # a checkpoint-<step> directory holds one
    if not (path / ADAPTER_CONFIG).is_file() and (nested / ADAPTER_CONFIG).is_file():
        path = nested
    if not (path / ADAPTER_CONFIG).is_file():
        hint = "run `finetune train` first" if adapter is None else "check --adapter"
        raise ModelError(f"no trained adapter in {path} (no {ADAPTER_CONFIG}); {hint}")
    saved = saved_adapter_type(path)
    reason = unmergeable_reason(saved) if saved else None
    if reason is not None:
        raise ModelError(f"cannot merge {path}: {reason}")
    return path


PEFT_TYPES = {
    "PREFIX_TUNING": "prefix_tuning",
    "PROMPT_TUNING": "prompt_tuning",
    "P_TUNING": "p_tuning",
}


def saved_adapter_type(adapter_dir: Path) -> str | None:
    """The schema's adapter name for a prompt-learning adapter saved in `adapter_dir`, else None
    (the adapter the config names is checked separately)."""
    import json

    try:
        peft_type = json.loads((adapter_dir / ADAPTER_CONFIG).read_text()).get("peft_type")
    except (OSError, ValueError, AttributeError):
        return None
    return PEFT_TYPES.get(str(peft_type))


def load_adapter_model(
    config: FineTuneConfig | None,
    adapter_dir: Path,
    *,
    base_dir: Path | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Any, Any]:
    """(base model with the adapter applied, tokenizer), on CPU, unmerged.

    The base is `config.base_model`, or without a config the adapter's own
    `base_model_name_or_path`; the tokenizer is the adapter's when it was saved
    with one (it may have gained tokens), else the base's.
    """
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_runtime.model.load import load_tokenizer, resolve_model_source

    if config is not None:
        name, trust = config.base_model, config.trust_remote_code
        source = resolve_model_source(name, base_dir)
    else:
        name = PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path or ""
        source, trust = resolve_model_source(name, base_dir), False
    if (adapter_dir / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    elif config is not None:
        tokenizer = load_tokenizer(config, source, base_dir)
    else:
        tokenizer = AutoTokenizer.from_pretrained(source)
    base: Any
    try:
        base = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust)
    except OSError as exc:
        raise ModelError(f"cannot load base model {name!r} for {adapter_dir}: {exc}") from exc
    if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(len(tokenizer))
    try:
        model = PeftModel.from_pretrained(base, adapter_dir)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ModelError(f"adapter {adapter_dir} does not fit base model {name!r}: {exc}") from exc
    model.eval()
    return model, tokenizer


def load_merged(
    config: FineTuneConfig,
    adapter_dir: Path,
    *,
    base_dir: Path | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Any, Any]:
    """(merged model, tokenizer) in memory, on CPU."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_runtime.model.load import load_tokenizer, resolve_model_source

    source = resolve_model_source(config.base_model, base_dir)
    identity = check_adapter_identity(config, adapter_dir, source)
    if (adapter_dir / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    else:
        tokenizer = load_tokenizer(config, source, base_dir)
    base: Any
    try:
        base = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, trust_remote_code=config.trust_remote_code
        )
    except OSError as exc:
        raise ModelError(f"cannot load base_model {config.base_model!r} to merge: {exc}") from exc
    check_architecture(identity, architecture_of(base.config), adapter_dir, config.base_model)
    if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(len(tokenizer))
    try:
        model = PeftModel.from_pretrained(base, adapter_dir)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ModelError(
            f"adapter {adapter_dir} does not fit base_model {config.base_model!r}: {exc}"
        ) from exc
    merged = model.merge_and_unload()
    merged.eval()
    return merged, tokenizer


def check_adapter_identity(config: FineTuneConfig, adapter_dir: Path, source: str) -> dict:
    """Verify the adapter's manifest and that it belongs to this base; returns its identity."""
    if verify_weights(adapter_dir, required=False) is None:
        log.warning("%s has no manifest (not written by finetune): not verified", adapter_dir)
        return {}
    base = Path(source)
    if base.is_dir():
        verify_weights(base, required=False)
        if manifest_id(adapter_dir) in identity_of(base).get("merged_adapters", []):
            raise IntegrityError(
                f"base_model {config.base_model!r} already contains adapter {adapter_dir} (it is "
                "a merge output of it); merging twice would apply the update twice: merge into "
                "the original base model"
            )
    identity = identity_of(adapter_dir)
    trained_on = identity.get("base_model")
    if trained_on is not None and trained_on != config.base_model:
        raise IntegrityError(
            f"adapter {adapter_dir} was trained on base_model {trained_on!r}, not "
            f"{config.base_model!r}; merge it with the config it was trained with"
        )
    return identity


def check_architecture(identity: dict, actual: dict, adapter_dir: Path, base_model: str) -> None:
    recorded = identity.get("base_architecture") or {}
    differs = [
        f"{key} {recorded[key]} → {actual.get(key)}"
        for key in sorted(recorded)
        if key in actual and actual[key] != recorded[key]
    ]
    if differs:
        raise IntegrityError(
            f"adapter {adapter_dir} was trained on a base of another shape than "
            f"{base_model!r} ({', '.join(differs)}); merge it into the model it was trained on"
        )


def merge(
    config: FineTuneConfig,
    *,
    adapter: str | Path | None = None,
    output: str | Path | None = None,
    base_dir: Path | None = None,
    precision: str = "fp32",
) -> Path:
    """Merge and save; returns the output directory (default output_dir/merged)."""
    if output is not None:
        try:
            check_safe_path(str(output))
        except ValueError as exc:
            raise ConfigError(f"--output: {exc}") from None
    if precision not in DTYPES:
        raise ConfigError(f"--dtype: {precision!r} is not one of {', '.join(DTYPES)}")
    adapter_dir = find_adapter(config, adapter)
    out = Path(output) if output else Path(config.output_dir) / MERGED_DIR
    occupied = out.exists() and (not out.is_dir() or any(out.iterdir()))
    if occupied and not (out / "config.json").is_file():
        raise ConfigError(
            f"--output: {out} exists and is not a model directory; refusing to replace it"
        )
    merged, tokenizer = load_merged(config, adapter_dir, base_dir=base_dir, dtype=DTYPES[precision])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_manifest(tmp, merged_identity(config, adapter_dir))
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("merged %s into %s -> %s", adapter_dir, config.base_model, out)
    return out


def merged_identity(config: FineTuneConfig, adapter_dir: Path) -> dict:
    adapter_id = manifest_id(adapter_dir)
    return {
        "kind": MERGED_DIR,
        "base_model": config.base_model,
        "merged_adapters": [adapter_id] if adapter_id else [],
    }
