"""Upload a file or a directory tree to S3, skipping objects that already match.

Used by `storage.publish` (the finished weights) and `finetune fetch --upload`. A
matching object (same size and the ETag S3 would compute for the local file with
these multipart settings) is not sent again, so a restarted gang re-uploads nothing.
Objects that fail in a retryable way are tried again in rounds with backoff.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_runtime.errors import FetchError
from finetune_runtime.storage.fetch_cache import is_state_file
from finetune_runtime.storage.redact import redact
from finetune_runtime.storage.s3 import (
    S3Location,
    S3Options,
    endpoint_of,
    make_client,
    options_with,
    parse_s3_uri,
)
from finetune_runtime.storage.s3_errors import client_error_info, describe_error, is_retryable
from finetune_runtime.storage.transfer import (
    Bar,
    TransferSettings,
    progress_bar,
    short_error,
    sleep_backoff,
)

log = logging.getLogger("finetune_runtime.storage.upload")


@dataclass
class UploadReport:
    uri: str
    uploaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0


def upload(
    src: Path | str,
    uri: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    options: S3Options | None = None,
    transfer: TransferSettings | None = None,
    show_progress: bool | None = None,
    client: Any = None,
) -> UploadReport:
    """Upload a file or a directory tree (e.g. the final adapter) to an S3 URI.

    A file goes to `uri` (or `uri/NAME` when `uri` ends with '/'); a directory's
    files go under `uri` as a prefix. Objects whose size and ETag already match
    the local file are not uploaded again. Hidden fetch state files are skipped.
    """
    src = Path(src)
    loc, root, files = _plan(src, parse_s3_uri(uri))
    transfer = transfer or TransferSettings()
    client = client or make_client(options_with(options, endpoint_url, region))
    endpoint = endpoint_of(client)
    report = UploadReport(uri=root.uri)
    cfg = transfer.s3transfer_config()
    todo: list[tuple[Path, str]] = []
    for path, key in files:
        if remote_matches(client, loc.bucket, key, path, cfg, endpoint):
            report.unchanged.append(key)
        else:
            todo.append((path, key))
    if todo:
        with progress_bar(show_progress, f"upload {root.uri}") as bar:
            bar.add(sum(p.stat().st_size for p, _ in todo), len(todo))

            def finished(path: Path, key: str) -> None:
                report.uploaded.append(key)
                report.bytes_uploaded += path.stat().st_size

            upload_all(client, loc.bucket, todo, transfer, bar, endpoint, finished)
    log.info(
        "uploaded %s → %s: %d uploaded (%d bytes), %d unchanged",
        src,
        root.uri,
        len(report.uploaded),
        report.bytes_uploaded,
        len(report.unchanged),
    )
    return report


def _plan(src: Path, loc: S3Location) -> tuple[S3Location, S3Location, list[tuple[Path, str]]]:
    """(bucket location, where the upload lands, [(local file, key)]) for a file or a tree."""
    if src.is_file():
        key = loc.key + src.name if loc.is_prefix else loc.key
        return loc, S3Location(loc.bucket, key), [(src, key)]
    if src.is_dir():
        loc = loc.as_prefix()
        files = [
            (path, loc.key + path.relative_to(src).as_posix())
            for path in sorted(src.rglob("*"))
            if path.is_file() and not is_state_file(path.name)
        ]
        return loc, loc, files
    raise FetchError(f"cannot upload {src}: no such file or directory")


def upload_all(
    client: Any,
    bucket: str,
    files: list[tuple[Path, str]],
    transfer: TransferSettings,
    bar: Bar,
    endpoint: str,
    finished: Callable[[Path, str], None],
) -> None:
    """Upload every (file, key) and call `finished`; retryable failures go another round."""
    from s3transfer.manager import TransferManager

    pending = files
    with TransferManager(client, transfer.s3transfer_config()) as manager:
        for attempt in range(1, max(1, transfer.attempts) + 1):
            futures = [
                (
                    path,
                    key,
                    manager.upload(str(path), bucket, key, subscribers=[bar.subscriber(key)]),
                )
                for path, key in pending
            ]
            failed: list[tuple[Path, str, BaseException]] = []
            for path, key, future in futures:
                try:
                    future.result()
                    finished(path, key)
                except Exception as exc:
                    failed.append((path, key, exc))
            if not failed:
                return
            fatal = [f for f in failed if not is_retryable(f[2])]
            if fatal or attempt >= transfer.attempts:
                _, key, error = (fatal or failed)[0]
                err = describe_error(
                    error, action="uploading to", uri=f"s3://{bucket}/{key}", endpoint=endpoint
                )
                if not fatal:
                    err = FetchError(f"{err} (gave up after {attempt} rounds of retries)")
                raise err from None
            for _path, key, error in failed:
                bar.rewind(key)
                log.warning("retrying upload of %s after %s", key, redact(short_error(error)))
            sleep_backoff(transfer.backoff, attempt)
            pending = [(p, k) for p, k, _ in failed]


def remote_matches(client: Any, bucket: str, key: str, path: Path, cfg: Any, endpoint: str) -> bool:
    """The object at `key` already holds this file's bytes (size and ETag match)."""
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        code, status = client_error_info(exc)
        if status in (403, 404) or code in ("404", "403", "NoSuchKey"):
            return False  # absent (or not listable): upload
        raise describe_error(
            exc, action="uploading to", uri=f"s3://{bucket}/{key}", endpoint=endpoint
        ) from None
    size = path.stat().st_size
    if int(head["ContentLength"]) != size:
        return False
    return head["ETag"].strip('"') == local_etag(path, size, cfg)


def local_etag(path: Path, size: int, cfg: Any) -> str:
    """The ETag S3 computes for this file uploaded with `cfg` (single or multipart MD5)."""
    from s3transfer.utils import ChunksizeAdjuster

    with path.open("rb") as fh:
        if size < cfg.multipart_threshold:
            return hashlib.file_digest(fh, "md5").hexdigest()
        part = ChunksizeAdjuster().adjust_chunksize(cfg.multipart_chunksize, size)
        digests = []
        while chunk := fh.read(part):
            digests.append(hashlib.md5(chunk).digest())
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"
