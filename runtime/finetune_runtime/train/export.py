"""Usable weights out of a run: the peft adapter (`output_dir/adapter`) or, for a full
fine-tune, the whole model (`output_dir/model`), each with its tokenizer.

Inside every checkpoint they are written by `export_weights`; at the end of a run
`write_final_weights` replaces `output_dir/<name>` atomically and records what the
weights belong to in their manifest (checked by `finetune merge` and `finetune serve`).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finetune_runtime import contract
from finetune_runtime.config import FineTuneConfig
from finetune_runtime.errors import CheckpointError
from finetune_runtime.storage.checkpoint_dirs import replace_dir
from finetune_runtime.storage.integrity import write_manifest
from finetune_runtime.train import guards
from finetune_runtime.train.backends.base import Backend

log = logging.getLogger(__name__)


def weights_name(config: FineTuneConfig) -> str:
    """The directory name of a run's usable weights: adapter/, or model/ for adapter none."""
    return contract.weights_dir_name(config.adapter)


def identity(config: FineTuneConfig, base_architecture: dict[str, Any]) -> dict[str, Any]:
    """What the final weights belong to, checked by `finetune merge`."""
    return {
        "kind": weights_name(config),
        "adapter": config.adapter,
        "base_model": config.base_model,
        "base_architecture": base_architecture,
    }


def export_weights(backend: Backend, directory: Path, name: str, tokenizer: Any) -> None:
    """Write usable weights (adapter or full model) to `directory/name` (collective:
    ZeRO-3 gathers the parameters on every rank; rank 0 writes)."""
    from finetune_runtime.model.load import save_weights

    state = backend.export_state_dict()
    if not backend.is_main:
        return
    save_weights(backend.unwrap(), directory / name, tokenizer, state_dict=state)


def write_final_weights(
    backend: Backend,
    output_dir: Path,
    name: str,
    export: Callable[[Path], None],
    manifest_identity: dict[str, Any],
) -> Path:
    """output_dir/<name> (adapter or model), replaced atomically (collective)."""
    tmp = output_dir / f".final.tmp-{os.getpid()}"
    final = output_dir / name
    if backend.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    backend.barrier()
    try:
        export(tmp)
        if backend.is_main:
            guards.check_not_foreign(final)  # something appeared there while we trained
            write_manifest(tmp / final.name, manifest_identity)
            replace_dir(tmp / final.name, final)
            log.info("wrote %s", final)
    except OSError as exc:
        raise CheckpointError(
            f"cannot write {final}: {exc.strerror or exc}; the last checkpoint is kept "
            "(`finetune merge --adapter checkpoint-N` uses it)"
        ) from exc
    finally:
        if backend.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
    backend.barrier()
    return final
