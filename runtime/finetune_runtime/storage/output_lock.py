"""One run per output_dir: an exclusive lock file naming its holder.

`output_dir/.finetune.lock` is held with `flock` (an advisory lock the kernel — or,
on NFS, the file server — drops when the holding process dies, however it dies) and
holds `{"host", "pid", "started"}` of the holder, so a second run fails at once with
a message naming the run that holds it.

Stale locks: a lock whose holder died is simply free (flock released), so the next
run takes it and logs the holder it replaced. On file systems without flock support
(ENOLCK/EOPNOTSUPP: some FUSE or object-store mounts) the file's contents decide:
a holder on this host whose process is gone (or whose pid now belongs to a newer
process) is stale and replaced; a holder on another host is never presumed dead —
the error says to delete the lock file once that run is known to be gone.

Waiting: a new attempt of a gang can start while the previous one is still saving
its last checkpoint, or while an NFS server has not yet noticed a dead client. So in
a pod or under torchrun, acquiring waits up to 120 s for a busy lock before giving up
(`$FINETUNE_LOCK_WAIT` seconds overrides; a plain local `finetune train` fails at once).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from finetune_runtime import contract
from finetune_runtime.errors import CheckpointError, LockedError

log = logging.getLogger(__name__)

LOCK_FILE = ".finetune.lock"
WAIT_ENV = contract.ENV_LOCK_WAIT
POD_WAIT_S = 120.0
_BUSY = (errno.EACCES, errno.EAGAIN)
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


def wait_seconds(env: Any = None) -> float:
    """$FINETUNE_LOCK_WAIT, else 120 s in a Kubernetes pod or under torchrun, 0 otherwise."""
    env = os.environ if env is None else env
    raw = env.get(WAIT_ENV, "").strip()
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            raise CheckpointError(f"{WAIT_ENV}={raw!r} is not a number of seconds") from None
    managed = env.get("KUBERNETES_SERVICE_HOST") or env.get("TORCHELASTIC_RUN_ID")
    return POD_WAIT_S if managed else 0.0


def holder_record() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "process_start": process_start(os.getpid()),
    }


def process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux /proc), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22: starttime, in clock ticks


def describe(holder: dict[str, Any]) -> str:
    return (
        f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
        f"started {holder.get('started', '?')}"
    )


def is_stale(holder: dict[str, Any], host: str | None = None) -> bool:
    """True only when the holder is provably gone: same host and its process is not running."""
    if holder.get("host") != (host or socket.gethostname()):
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, owned by someone else
    recorded = holder.get("process_start")
    return recorded is not None and process_start(pid) not in (None, recorded)


def _read(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(fd: int, record: dict[str, Any]) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(record) + "\n").encode())
    os.fsync(fd)


class OutputDirLock:
    """Hold output_dir's lock for a `with` block (or acquire()/release())."""

    def __init__(self, output_dir: Path) -> None:
        self.path = Path(output_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, wait_s: float = 0.0) -> OutputDirLock:
        """Take the lock; while another live run holds it, retry for up to `wait_s`."""
        deadline = time.monotonic() + wait_s
        announced = False
        while True:
            try:
                return self._acquire_once()
            except LockedError as exc:
                if time.monotonic() >= deadline:
                    raise
                if not announced:
                    log.warning("%s; waiting up to %.0f s for it to end", exc, wait_s)
                    announced = True
                time.sleep(0.5)

    def _acquire_once(self) -> OutputDirLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(
                f"cannot create output_dir {self.path.parent}: {exc.strerror}"
            ) from exc
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                previous = self._lock(fd)
                if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                    raise FileNotFoundError  # released and unlinked meanwhile: retry
            except FileNotFoundError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            if previous:
                log.warning(
                    "%s: took over the lock of a run that is gone (%s)",
                    self.path,
                    describe(previous),
                )
            _write(fd, holder_record())
            self._fd = fd
            return self
        raise LockedError(f"{self.path}: the lock keeps changing hands; is another run starting?")

    def _lock(self, fd: int) -> dict[str, Any]:
        """Lock `fd`; returns the previous (dead) holder's record, {} when none."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read(fd)
            if exc.errno in _BUSY:
                raise LockedError(
                    f"output_dir {self.path.parent} is in use by another run ({describe(holder)}); "
                    "wait for it to finish, stop it, or choose another output_dir"
                ) from None
            if exc.errno not in _UNSUPPORTED:
                raise CheckpointError(f"cannot lock {self.path}: {exc.strerror}") from exc
            return self._lock_by_contents(fd, holder)
        return _read(fd)

    def _lock_by_contents(self, fd: int, holder: dict[str, Any]) -> dict[str, Any]:
        """No flock here: trust the recorded holder unless it is provably dead."""
        if holder and not is_stale(holder):
            raise LockedError(
                f"output_dir {self.path.parent} is in use by another run ({describe(holder)}) and "
                f"this file system cannot tell whether it is alive; once it is gone, delete "
                f"{self.path}"
            )
        return holder

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):  # unlink while still locked: no stale file left
            self.path.unlink(missing_ok=True)
        os.close(fd)

    def __enter__(self) -> OutputDirLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
