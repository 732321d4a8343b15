"""Graceful stop on SIGTERM (Kubernetes' grace period, torchrun forwarding it) and SIGINT.

The handler only records the request; the loop checks it between optimizer
steps, agrees on it across ranks, writes a checkpoint and exits with
EXIT_PREEMPTED. A second signal while stopping restores the default handler,
so a stuck save can still be interrupted.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

from finetune_runtime.errors import EXIT_PREEMPTED

log = logging.getLogger(__name__)

# EXIT_PREEMPTED (143 = 128 + SIGTERM, what a process killed by SIGTERM reports, so
# supervisors read it the same way) means "stopped on request after saving a checkpoint;
# resume will continue". It lives with the other exit codes in finetune_runtime.errors.
__all__ = ["EXIT_PREEMPTED", "GracefulStop"]


class GracefulStop:
    """Context manager installing handlers that set `requested` instead of dying."""

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            log.warning("second %s: stopping without waiting for the checkpoint", name)
            signal.signal(signum, self._previous.get(signal.Signals(signum), signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.requested = True
        self.signal_name = name
        log.warning("%s received: finishing the current step, then checkpointing", name)

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
