"""Moving bytes down: s3transfer-managed multipart downloads with whole-object retry rounds.

botocore retries each request and s3transfer retries a body that breaks
mid-stream; objects that still fail (or arrive corrupted) are retried here in
rounds with backoff. A download is verified (size; MD5 for single-part ETags)
and fsynced before it is renamed into place. The settings, the backoff and the
progress bar are shared with `storage.upload`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_runtime.errors import FetchError
from finetune_runtime.storage.fetch_cache import temp_for
from finetune_runtime.storage.redact import redact
from finetune_runtime.storage.s3 import RemoteObject, S3Location
from finetune_runtime.storage.s3_errors import (
    TransferIntegrityError,
    client_error_info,
    describe_error,
    is_retryable,
)

log = logging.getLogger("finetune_runtime.storage.fetch")

MiB = 1024 * 1024


@dataclass(frozen=True)
class TransferSettings:
    """Multipart and retry knobs. Defaults suit multi-GB model shards."""

    multipart_threshold: int = 64 * MiB
    multipart_chunksize: int = 16 * MiB
    max_concurrency: int = 8
    attempts: int = 3  # whole-object rounds on top of botocore's per-request retries
    backoff: float = 1.0  # seconds before the 2nd round, doubling, with jitter

    def s3transfer_config(self) -> Any:
        from s3transfer.manager import TransferConfig

        return TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.multipart_chunksize,
            max_request_concurrency=self.max_concurrency,
        )


@dataclass
class Job:
    obj: RemoteObject
    local: Path
    tmp: Path | None = None


def download_all(
    client: Any,
    loc: S3Location,
    jobs: list[Job],
    transfer: TransferSettings,
    bar: Bar,
    endpoint: str,
    finished: Callable[[Job], None],
) -> None:
    """Download every job to a temp file, verify it, rename it into place, call `finished`.

    Objects that failed in a retryable way are tried again in rounds with backoff; the
    first failure that is not retryable (or the last round's) becomes a FetchError."""
    from s3transfer.manager import TransferManager

    pending = jobs
    with TransferManager(client, transfer.s3transfer_config()) as manager:
        for attempt in range(1, max(1, transfer.attempts) + 1):
            failed = _download_round(manager, client, loc, pending, bar, finished)
            if not failed:
                return
            fatal = [(j, e) for j, e in failed if not is_retryable(e)]
            if fatal or attempt >= transfer.attempts:
                job, error = (fatal or failed)[0]
                uri = f"s3://{loc.bucket}/{job.obj.key}"
                err = describe_error(error, action="downloading", uri=uri, endpoint=endpoint)
                if not fatal:
                    err = FetchError(f"{err} (gave up after {attempt} rounds of retries)")
                raise err from None
            for job, error in failed:
                bar.rewind(job.obj.key)
                log.warning(
                    "retrying s3://%s/%s after %s (round %d of %d)",
                    loc.bucket,
                    job.obj.key,
                    redact(short_error(error)),
                    attempt + 1,
                    transfer.attempts,
                )
                code, _ = client_error_info(error)
                if code == "PreconditionFailed" or "ETag" in str(error):
                    job.obj = _refresh(client, loc.bucket, job.obj, endpoint)
            sleep_backoff(transfer.backoff, attempt)
            pending = [job for job, _ in failed]


def _download_round(
    manager: Any,
    client: Any,
    loc: S3Location,
    jobs: list[Job],
    bar: Bar,
    finished: Callable[[Job], None],
) -> list[tuple[Job, BaseException]]:
    """One round: submit every job, then settle each; returns the ones that failed.
    Temp files of failed (or, on an interrupt, all) jobs are removed."""
    submitted = []
    try:
        for job in jobs:
            job.local.parent.mkdir(parents=True, exist_ok=True)
            job.tmp = temp_for(job.local)
            future = manager.download(
                loc.bucket,
                job.obj.key,
                str(job.tmp),
                subscribers=[_KnownObject(job.obj), bar.subscriber(job.obj.key)],
            )
            submitted.append((job, future))
        failed: list[tuple[Job, BaseException]] = []
        for job, future in submitted:
            try:
                future.result()
                _verify(client, loc.bucket, job)
                os.replace(job.tmp, job.local)  # type: ignore[arg-type]
                finished(job)
            except Exception as exc:
                _discard(job.tmp)
                failed.append((job, exc))
    except BaseException:
        for job, _ in submitted:
            _discard(job.tmp)
        raise
    return failed


def _refresh(client: Any, bucket: str, obj: RemoteObject, endpoint: str) -> RemoteObject:
    """The object changed while we read it: fetch its new size and ETag."""
    try:
        head = client.head_object(Bucket=bucket, Key=obj.key)
    except Exception as exc:
        raise describe_error(
            exc, action="downloading", uri=f"s3://{bucket}/{obj.key}", endpoint=endpoint
        ) from None
    return RemoteObject.from_head(obj.key, head)


def _verify(client: Any, bucket: str, job: Job) -> None:
    """Size always; MD5 when the ETag is one. fsync so a crash after replace keeps the data."""
    assert job.tmp is not None
    size = job.tmp.stat().st_size
    if size != job.obj.size:
        raise TransferIntegrityError(
            f"s3://{bucket}/{job.obj.key}: got {size} bytes, expected {job.obj.size}"
        )
    with job.tmp.open("rb") as fh:
        if job.obj.md5 is not None:
            digest = hashlib.file_digest(fh, "md5").hexdigest()
            if digest != job.obj.md5 and not _etag_is_not_md5(client, bucket, job.obj.key):
                raise TransferIntegrityError(
                    f"s3://{bucket}/{job.obj.key}: MD5 {digest} does not match ETag {job.obj.md5}"
                )
        os.fsync(fh.fileno())


def _etag_is_not_md5(client: Any, bucket: str, key: str) -> bool:
    """SSE-KMS and SSE-C objects have ETags that are not the content MD5."""
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except Exception:
        return False
    return head.get("ServerSideEncryption") == "aws:kms" or bool(head.get("SSECustomerAlgorithm"))


def _discard(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()


def sleep_backoff(base: float, attempt: int) -> None:
    """Before retry round `attempt + 1`: `base` doubling per round, capped, with jitter."""
    delay = min(base * (2 ** (attempt - 1)), 30.0)
    time.sleep(delay * random.uniform(0.5, 1.0))


def short_error(exc: BaseException) -> str:
    """`Type: first line` of an exception, for a one-line retry log."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]


class _KnownObject:
    """Tell s3transfer the size and ETag we already listed: no extra HEAD, and ranged
    GETs carry If-Match so a multipart download never mixes two versions."""

    def __init__(self, obj: RemoteObject) -> None:
        self.obj = obj

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        future.meta.provide_transfer_size(self.obj.size)
        future.meta.provide_object_etag(self.obj.etag)

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        pass

    def on_done(self, future: Any, **kwargs: Any) -> None:
        pass


# -- progress -----------------------------------------------------------------------


class Bar:
    """A rich progress bar on a terminal; a no-op elsewhere (logs, init containers)."""

    def __init__(self, progress: Any, description: str) -> None:
        self._progress = progress
        self._description = description
        self._task: Any = None
        self._advanced: dict[str, int] = {}

    def add(self, total_bytes: int, count: int) -> None:
        if self._progress is not None:
            self._task = self._progress.add_task(
                f"{self._description} ({count} file{'s' if count != 1 else ''})", total=total_bytes
            )

    def subscriber(self, name: str = "") -> Any:
        bar = self

        class _Sub:
            def on_queued(self, future: Any, **kwargs: Any) -> None:
                pass

            def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
                bar.advance(bytes_transferred, name)

            def on_done(self, future: Any, **kwargs: Any) -> None:
                pass

        return _Sub()

    def advance(self, n: int, name: str = "") -> None:
        self._advanced[name] = self._advanced.get(name, 0) + n
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)

    def rewind(self, name: str) -> None:
        """A failed attempt's bytes will be transferred again."""
        self.advance(-self._advanced.get(name, 0), name)


@contextlib.contextmanager
def progress_bar(show: bool | None, description: str) -> Iterator[Bar]:
    if show is None:
        show = sys.stderr.isatty()
    if not show:
        yield Bar(None, description)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    with progress:
        yield Bar(progress, description)
