"""What a training run shows: a rich progress bar on a terminal, log lines otherwise.

Log lines are `key=value` pairs so they can be grepped and parsed; they are
emitted on rank 0 only (the loop decides).
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Any

log = logging.getLogger("finetune_runtime.train")


def format_metrics(metrics: dict[str, Any]) -> str:
    parts = []
    for key, value in metrics.items():
        if value is None:
            continue
        if isinstance(value, float):
            if not math.isfinite(value):
                text = str(value)
            elif key in ("lr", "learning_rate"):
                text = f"{value:.3e}"
            elif key in ("tokens_per_s", "tokens_per_second"):
                text = f"{value:.0f}"
            elif key in ("epoch", "elapsed_s"):
                text = f"{value:.2f}"
            else:
                text = f"{value:.4f}"
        else:
            text = str(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


class StepDisplay:
    """Progress of optimizer steps; `enabled=False` on non-zero ranks."""

    def __init__(self, total: int, start: int, *, enabled: bool, bar: bool | None = None) -> None:
        self.enabled = enabled
        self._progress: Any = None
        self._task: Any = None
        use_bar = sys.stderr.isatty() if bar is None else bar
        if enabled and use_bar:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._task = self._progress.add_task("train", total=total, completed=start, info="")
            self._progress.start()

    def line(self, message: str) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False)
        else:
            log.info(message)

    def advance(self, step: int, loss: float | None) -> None:
        if self._progress is not None:
            info = f"loss {loss:.4f}" if loss is not None and math.isfinite(loss) else ""
            self._progress.update(self._task, completed=step, info=info)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def perplexity(loss: float) -> float:
    """exp(loss), inf when that overflows (JSON-safe as a float)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


def eval_line(step: int, loss: float | None) -> str:
    """`step=N eval_loss=... eval_perplexity=...`."""
    shown: dict[str, Any] = {"step": step, "eval_loss": loss}
    if loss is not None:
        shown["eval_perplexity"] = perplexity(loss)
    return format_metrics(shown)
