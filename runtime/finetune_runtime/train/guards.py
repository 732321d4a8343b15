"""Checks that stop a run before it produces a silent wrong result or clobbers another's.

- `claim_output_dir`: refuse unsafe/unwritable output_dir, take its lock, refuse to
  replace weights we did not write — all before any compute is spent.
- `check_resume_config`: the checkpoint's config must match (else `--resume-with-changes`).
- `check_finite` / `nonfinite_parameters`: a NaN/Inf loss, gradient norm or weight ends
  the run with DivergedError (exit 8); nothing after the last finite step is saved.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from finetune_runtime.config import FineTuneConfig, load_config
from finetune_runtime.errors import CheckpointError, ConfigError, DivergedError, FinetuneError
from finetune_runtime.storage.integrity import sha256_file
from finetune_runtime.storage.outdir import foreign_weights_dir, probe_write, unsafe_reason
from finetune_runtime.storage.output_lock import OutputDirLock, wait_seconds
from finetune_runtime.train.resume_check import config_changes

log = logging.getLogger(__name__)


def claim_output_dir(output_dir: Path, weights_name: str) -> OutputDirLock:
    """Checks + the lock (rank 0 only). The caller releases the returned lock."""
    reason = unsafe_reason(output_dir)
    if reason:
        raise ConfigError(f"output_dir: {reason}")
    problem = probe_write(output_dir, create=True)
    if problem:
        raise CheckpointError(f"output_dir: {problem}; fix it before training")
    lock = OutputDirLock(output_dir).acquire(wait_s=wait_seconds())
    try:
        check_not_foreign(output_dir / weights_name)
    except BaseException:
        lock.release()
        raise
    return lock


def check_not_foreign(weights_dir: Path) -> None:
    if foreign_weights_dir(weights_dir):
        raise CheckpointError(
            f"{weights_dir} holds files this tool did not write (no manifest); training would "
            "replace it at the end: move it away or choose another output_dir"
        )


def _same_file(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Both dataset paths are readable local files with identical bytes: where the data
    lives changed (each pod fetches into its own volume), what it is did not."""
    a, b = Path(str(old.get("path"))), Path(str(new.get("path")))
    try:
        if not (a.is_file() and b.is_file()) or a.stat().st_size != b.stat().st_size:
            return False
        return sha256_file(a) == sha256_file(b)
    except OSError:
        return False


def check_resume_config(checkpoint: Path, config: FineTuneConfig, allow_changes: bool) -> None:
    """Refuse to resume `checkpoint` with a config that changes the result."""
    saved_path = checkpoint / "config.yaml"
    if not saved_path.is_file():
        log.warning("%s has no config.yaml: cannot check that the config is unchanged", checkpoint)
        return
    try:
        saved = load_config(saved_path)
    except FinetuneError as exc:
        log.warning("cannot compare with %s: %s", saved_path, exc)
        return
    before, now = saved.model_dump(mode="json"), config.model_dump(mode="json")
    pairs = zip(before.get("datasets") or [], now.get("datasets") or [], strict=False)
    for old_ds, new_ds in pairs:  # a dataset added or removed is a change either way
        if old_ds.get("path") != new_ds.get("path") and _same_file(old_ds, new_ds):
            old_ds["path"] = new_ds["path"]  # the same data at another path (e.g. per pod)
    changes = config_changes(before, now)
    if not changes:
        return
    listed = "; ".join(changes)
    if allow_changes:
        log.warning(
            "resuming %s with a changed config (--resume-with-changes): %s", checkpoint.name, listed
        )
        return
    raise CheckpointError(
        f"{checkpoint} was written with a different config ({listed}); resuming would mix two "
        "runs. Restore those settings, pass --resume-with-changes to continue anyway, or use "
        "another output_dir (or --no-resume to start afresh there)"
    )


def check_finite(what: str, value: float | None, step: int) -> None:
    if value is not None and not math.isfinite(value):
        raise DivergedError(diverged_message(what, value, step))


def diverged_message(what: str, value: Any, step: int) -> str:
    return (
        f"training diverged: {what} is {value} at step {step}; stopped without saving "
        "(the last checkpoint, if any, is the last good state). Lower learning_rate, set "
        "max_grad_norm, or check the data"
    )


def nonfinite_parameters(model: Any) -> list[str]:
    """Names of trainable parameters holding NaN/Inf (local shards only)."""
    import torch

    bad = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and param.numel() and not torch.isfinite(param).all():
                bad.append(name)
    return bad


def check_weights_finite(backend: Any, step: int) -> None:
    """Raise DivergedError on every rank when any rank holds a NaN/Inf trainable weight."""
    bad = nonfinite_parameters(backend.unwrap())
    if backend.all_reduce_sum(float(len(bad))) > 0:
        name = bad[0] if bad else "(on another rank)"
        raise DivergedError(diverged_message(f"parameter {name}", "not finite", step))
