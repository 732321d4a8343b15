"""What a caller (the CLI) decides about a run beyond its config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class TrainOptions:
    """Run-time choices that are not part of the config (CLI flags)."""

    base_dir: Path | None = None  # where relative dataset/model paths are resolved
    max_steps: int | None = None
    resume: bool | None = None  # None: the config's training.auto_resume
    resume_from: str | None = None  # `--resume CHECKPOINT`: this checkpoint (over the config's)
    resume_with_changes: bool = False  # resume even if the config differs from the checkpoint's
    serve_progress: bool = True
    progress_port: int | None = None  # None: $FINETUNE_PROGRESS_PORT or the default
    progress_host: str = "127.0.0.1"
    progress_bar: bool | None = None  # None: when stderr is a terminal
