"""The checkpoint directory layout under `output_dir`, for whoever reads it (training,
`finetune generate`, `finetune merge`): `checkpoint-<step>/` directories that count only
with their COMPLETE marker, and replacing a finished directory atomically.

Writing checkpoints (atomic, collective) is `finetune_runtime.train.checkpoint`'s job.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "checkpoint-"
COMPLETE = "COMPLETE"
_NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True, order=True)
class CheckpointRef:
    step: int
    path: Path


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).is_file()


def list_checkpoints(output_dir: Path, *, warn: bool = False) -> list[CheckpointRef]:
    """Complete checkpoints in `output_dir`, oldest first. Incomplete ones are skipped."""
    if not output_dir.is_dir():
        return []
    found = []
    for entry in output_dir.iterdir():
        match = _NAME.match(entry.name)
        if match and entry.is_dir():
            if is_complete(entry):
                found.append(CheckpointRef(int(match.group(1)), entry))
            elif warn:
                log.warning("ignoring incomplete checkpoint %s (no %s marker)", entry, COMPLETE)
    return sorted(found)


def latest_checkpoint(output_dir: Path) -> CheckpointRef | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def replace_dir(src: Path, dest: Path) -> None:
    """Move the finished directory `src` to `dest`, replacing an older `dest`.

    `dest` is never half-written: it is the old tree, briefly absent, then the new
    one. A leftover of the old tree is named `<dest>.tmp-old-*`, which checkpoint
    scans ignore and clean up.
    """
    old = None
    if dest.exists():
        old = dest.with_name(f"{dest.name}.tmp-old-{secrets.token_hex(3)}")
        os.replace(dest, old)
    os.replace(src, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
