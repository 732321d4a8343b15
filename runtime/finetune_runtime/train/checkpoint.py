"""Checkpoints in `output_dir/checkpoint-<step>/`: atomic, complete or absent.

Layout of one checkpoint (the backend adds its own files):

    checkpoint-40/
      adapter/ or model/      weights as safetensors (+ tokenizer): usable by `finetune merge`
      trainable.safetensors   ┐
      optimizer.pt            │ LocalBackend/DDPBackend training state
      scheduler.pt            │ (DeepSpeed writes its own layout instead)
      client_state.pt         ┘ the loop's counters: step, epoch, batch index, losses
      rng-rank<N>.pt          each rank's RNG streams (python, numpy, torch, cuda)
      config.yaml             the config that produced it
      trainer_state.json      human-readable summary
      finetune-manifest.json  SHA-256 of every file above (finetune_runtime.storage.integrity)
      COMPLETE                written last; a directory without it is ignored

Writing: rank 0 creates `checkpoint-<step>.tmp-<token>`, every rank writes into
it, rank 0 fsyncs everything, writes COMPLETE, renames it into place and fsyncs
the parent. A crash at any point leaves either the old set of checkpoints or
the new complete one, never a half-written `checkpoint-<step>`. Resuming verifies
the manifest and falls back to the newest intact checkpoint, saying which it skipped.

The directory layout itself (names, COMPLETE, listing, `replace_dir`) is
`finetune_runtime.storage.checkpoint_dirs`, which `finetune generate`/`merge` read too.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetune_runtime.errors import CheckpointError, IntegrityError
from finetune_runtime.storage.checkpoint_dirs import (
    COMPLETE,
    PREFIX,
    is_complete,
    latest_checkpoint,
    list_checkpoints,
    replace_dir,
)
from finetune_runtime.storage.integrity import verify_weights, write_manifest
from finetune_runtime.train.backends.base import Backend

log = logging.getLogger(__name__)

_TMP = re.compile(r"^checkpoint-\d+\.tmp-")


def resolve_resume(output_dir: Path, explicit: str | None, auto: bool) -> Path | None:
    """The checkpoint to resume from: `explicit`, else the newest intact one if `auto`.

    Every candidate's manifest is verified; with `auto`, a corrupted checkpoint is skipped
    (with a warning naming it) in favour of the next older one. An explicit checkpoint that
    fails verification is an error: the user asked for that one.
    """
    if explicit:
        path = explicit_checkpoint(output_dir, explicit)
        check_intact(path)
        return path
    if not auto:
        return None
    found = list_checkpoints(output_dir, warn=True)
    skipped: list[str] = []
    for ref in reversed(found):
        try:
            check_intact(ref.path)
        except IntegrityError as exc:
            log.warning("skipping %s: %s", ref.path.name, exc)
            skipped.append(ref.path.name)
            continue
        if skipped:
            log.warning(
                "resuming from %s, the newest intact checkpoint (skipped %s)",
                ref.path.name,
                ", ".join(skipped),
            )
        return ref.path
    if skipped:
        raise IntegrityError(
            f"{output_dir}: every checkpoint failed verification ({', '.join(skipped)}); "
            "nothing intact to resume from: move them away to start afresh"
        )
    return None


def agreed_resume(
    backend: Backend, output_dir: Path, explicit: str | None, auto: bool
) -> Path | None:
    """resolve_resume for a whole process group: rank 0 verifies the candidates (hashing
    them once, not once per rank) and every rank gets its choice."""
    if explicit:
        return resolve_resume(output_dir, explicit, auto)
    chosen = -1
    if backend.is_main:
        path = resolve_resume(output_dir, None, auto)
        chosen = int(path.name[len(PREFIX) :]) if path is not None else -1
    step = int(backend.all_reduce_sum(chosen + 1 if backend.is_main else 0)) - 1
    return None if step < 0 else output_dir / f"{PREFIX}{step}"


def explicit_checkpoint(output_dir: Path, explicit: str) -> Path:
    """`explicit` as a path; a relative one that is not in the cwd is looked up in output_dir."""
    path = Path(explicit).expanduser()
    if not path.is_absolute() and not path.exists() and (output_dir / path).exists():
        path = output_dir / path
    if not path.is_dir():
        raise CheckpointError(
            f"resume checkpoint {explicit!r} is not a directory (nor one in {output_dir}); "
            f"name a {PREFIX}<step> directory or remove the setting to resume automatically"
        )
    if not is_complete(path):
        raise CheckpointError(
            f"resume checkpoint {path} is incomplete (no {COMPLETE} marker: the save was "
            "interrupted); pick an older checkpoint"
        )
    return path


def check_intact(path: Path) -> None:
    """Verify a checkpoint's manifest; older checkpoints without one are used unverified."""
    if verify_weights(path, required=False) is None:
        log.warning("%s has no manifest (written by an older version): not verified", path)


# --------------------------------------------------------------------------- RNG


def capture_rng() -> dict[str, Any]:
    np_state: Any = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].copy()),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy(), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_file(rank: int) -> str:
    return f"rng-rank{rank}.pt"


def load_rng(ckpt_dir: Path, rank: int) -> bool:
    """Restore this rank's RNG streams; False when the checkpoint has none for it."""
    path = ckpt_dir / rng_file(rank)
    if not path.is_file():
        return False
    restore_rng(torch.load(path, weights_only=True))
    return True


# --------------------------------------------------------------------------- writing


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Delete a checkpoint so that no intermediate state looks complete."""
    doomed = path.with_name(f"{path.name}.tmp-deleting-{secrets.token_hex(3)}")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


class CheckpointWriter:
    """Saves checkpoints of one run; every method is called on every rank."""

    def __init__(self, output_dir: Path, backend: Backend, save_total_limit: int | None) -> None:
        self.output_dir = output_dir
        self.backend = backend
        self.save_total_limit = save_total_limit
        self._cleaned = False

    def save(
        self,
        step: int,
        client_state: dict[str, Any],
        *,
        export: Callable[[Path], None] | None = None,
        text_files: dict[str, str] | None = None,
    ) -> Path:
        """Write checkpoint-<step>; `export(dir)` runs on all ranks to add weights."""
        backend = self.backend
        final = self.output_dir / f"{PREFIX}{step}"
        # All ranks must agree on the temporary name: rank 0 draws it, the sum spreads it.
        token = int(backend.all_reduce_sum(secrets.randbelow(10**9) if backend.is_main else 0))
        tmp = self.output_dir / f"{PREFIX}{step}.tmp-{token:09d}"
        if backend.is_main:
            try:
                self.output_dir.mkdir(parents=True, exist_ok=True)
                if not self._cleaned:
                    self._remove_stale_tmp()
                    self._cleaned = True
                tmp.mkdir()
            except OSError as exc:
                raise save_error(final, exc, self.output_dir) from exc
        backend.barrier()
        try:
            torch.save(capture_rng(), tmp / rng_file(backend.rank))
            backend.save(tmp, client_state)
            if export is not None:
                export(tmp)
            backend.barrier()
            if backend.is_main:
                for name, text in (text_files or {}).items():
                    (tmp / name).write_text(text, encoding="utf-8")
                write_manifest(tmp)
                _fsync_tree(tmp)
                (tmp / COMPLETE).write_text(json.dumps({"step": step}) + "\n")
                _fsync_tree(tmp)
                replace_dir(tmp, final)  # over an older attempt's copy of this very step
                _fsync_dir(self.output_dir)
                self._rotate()
        except BaseException as exc:
            if backend.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            # torch.save and safetensors report a failed write(2) as RuntimeError.
            if isinstance(exc, OSError | RuntimeError):
                raise save_error(final, exc, self.output_dir) from exc
            raise
        backend.barrier()
        return final

    def _remove_stale_tmp(self) -> None:
        for entry in self.output_dir.iterdir():
            if _TMP.match(entry.name) and entry.is_dir():
                log.info("removing leftover partial checkpoint %s", entry)
                shutil.rmtree(entry, ignore_errors=True)

    def _rotate(self) -> None:
        if not self.save_total_limit:
            return
        complete = list_checkpoints(self.output_dir)
        for old in complete[: max(0, len(complete) - self.save_total_limit)]:
            log.info(
                "removing old checkpoint %s (save_total_limit=%d)", old.path, self.save_total_limit
            )
            _remove(old.path)


def save_error(target: Path, exc: Exception, output_dir: Path) -> CheckpointError:
    """One line for a failed save, naming what is kept (the partial copy is removed)."""
    previous = latest_checkpoint(output_dir)
    kept = f"{previous.path.name} is kept" if previous else "no earlier checkpoint exists"
    if isinstance(exc, OSError):
        reason = (exc.strerror or str(exc)) + (f" ({exc.filename})" if exc.filename else "")
    else:
        reason = f"a write failed ({(str(exc).strip().splitlines() or ['?'])[0]})"
    return CheckpointError(
        f"cannot write {target}: {reason}"
        + f"; nothing partial was left behind and {kept}. Free space or fix permissions, "
        "then rerun to resume"
    )
