"""A trainer's own exit code, passed to `finetune launch` past torchrun.

torchrun reports any failed worker as a plain 1, yet the operator needs the runtime's code
(e.g. 8, diverged: permanent) to decide whether restarting the gang can help. So the
launcher names a file in $FINETUNE_EXIT_FILE; a `finetune` command failing with a
FinetuneError writes its code and message there (`record_exit_code`), and the launcher
reads them back (`recorded_exit`)."""

from __future__ import annotations

import contextlib
import os

from finetune_runtime.contract import ENV_EXIT_FILE

EXIT_FILE_ENV = ENV_EXIT_FILE


def record_exit_code(code: int, message: str = "") -> None:
    """Leave the exit code (and the error's message) for `finetune launch`, which reports a
    trainer's own code rather than torchrun's generic 1 and repeats the message as its last
    log line, where the operator's log tail of a failed worker will find it. Atomic; a no-op
    outside `finetune launch`."""
    path = os.environ.get(EXIT_FILE_ENV)
    if not path:
        return
    with contextlib.suppress(OSError):
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(f"{code}\n{message}")
        os.replace(tmp, path)


def recorded_exit(path: str) -> tuple[int, str] | None:
    """The (exit code, message) a trainer recorded at `path`, or None (none, or unreadable)."""
    try:
        with open(path, encoding="utf-8") as handle:
            code, _, message = handle.read().partition("\n")
        return int(code.strip()), message.strip()
    except (OSError, ValueError):
        return None
