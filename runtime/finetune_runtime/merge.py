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

from finetune_runtime.config import FineTuneConfig, check_safe_path
from finetune_runtime.errors import ConfigError, IntegrityError, ModelError
from finetune_runtime.integrity import (
    architecture_of,
    identity_of,
    manifest_id,
    verify_weights,
    write_manifest,
)
from finetune_runtime.train.checkpoint import replace_dir

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
MERGED_DIR = "merged"
MERGE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def find_adapter(config: FineTuneConfig, adapter: str | Path | None) -> Path:
    """The adapter directory: given (an adapter dir or a checkpoint holding one), else
    output_dir/adapter."""
    if config.adapter == "none":
        raise ModelError(
            "nothing to merge: adapter is 'none' (a full fine-tune), whose weights are already "
            f"a complete model in {Path(config.output_dir) / 'model'}"
        )
    output_dir = Path(config.output_dir)
    path = Path(adapter) if adapter else output_dir / "adapter"
    if adapter and not path.is_absolute() and not path.exists() and (output_dir / path).exists():
        path = output_dir / path  # `--adapter checkpoint-40` means the one in output_dir
    if not (path / ADAPTER_CONFIG).is_file() and (path / "adapter" / ADAPTER_CONFIG).is_file():
        path = path / "adapter"  # a checkpoint-<step> directory
    if not (path / ADAPTER_CONFIG).is_file():
        hint = "run `finetune train` first" if adapter is None else "check --adapter"
        raise ModelError(f"no trained adapter in {path} (no {ADAPTER_CONFIG}); {hint}")
    return path


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

    from finetune_runtime.model import load_tokenizer, resolve_model_source

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
    if precision not in MERGE_DTYPES:
        raise ConfigError(f"--dtype: {precision!r} is not one of {', '.join(MERGE_DTYPES)}")
    adapter_dir = find_adapter(config, adapter)
    out = Path(output) if output else Path(config.output_dir) / MERGED_DIR
    occupied = out.exists() and (not out.is_dir() or any(out.iterdir()))
    if occupied and not (out / "config.json").is_file():
        raise ConfigError(
            f"--output: {out} exists and is not a model directory; refusing to replace it"
        )
    merged, tokenizer = load_merged(
        config, adapter_dir, base_dir=base_dir, dtype=MERGE_DTYPES[precision]
    )
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
