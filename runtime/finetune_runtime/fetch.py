"""`finetune fetch`: S3 objects and prefixes → local files, safely and only once.

- Atomic: every object is downloaded to a hidden temp file in the destination
  directory, checked (size; MD5 for single-part ETags), fsynced, then
  `os.replace`d into place. A crash or a broken connection never leaves a file
  under the real name that would be used.
- Cached by ETag: a manifest (`.finetune-fetch.json` in a directory, or
  `.NAME.finetune-fetch.json` beside a single file) records key, ETag, size and
  local mtime. Re-running lists the objects but GETs only those that changed.
  While a fetch runs, finished objects are journaled, so an interrupted prefix
  fetch resumes where it stopped; the manifest is written last, once all are in.
- Resilient: botocore retries each request (standard mode); s3transfer retries a
  body that breaks mid-stream; on top, whole objects that still failed are
  retried a few rounds with backoff (a changed object is re-listed first).
- One fetch per destination at a time (flock), so ranks sharing a cache wait
  for each other instead of downloading twice.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import random
import secrets
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from finetune_runtime.errors import FetchError
from finetune_runtime.s3 import (
    ADDRESSING_STYLES,
    S3Location,
    S3Options,
    TransferIntegrityError,
    client_error_info,
    describe_error,
    endpoint_of,
    is_retryable,
    is_s3_uri,
    make_client,
    parse_s3_uri,
    redact,
)

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MANIFEST_VERSION = 1
STATE_MARK = ".finetune-"  # every hidden file this module writes carries it
PREFIX_STATE = ".finetune-fetch"
TEMP_SUFFIX = ".finetune-part"


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


@dataclass(frozen=True)
class RemoteObject:
    key: str
    size: int
    etag: str  # as S3 sends it, quoted
    last_modified: str | None = None

    @property
    def etag_value(self) -> str:
        return self.etag.strip('"')

    @property
    def md5(self) -> str | None:
        """The content MD5 when the ETag is one (single-part, not SSE-KMS/SSE-C)."""
        value = self.etag_value.lower()
        if len(value) == 32 and all(c in "0123456789abcdef" for c in value):
            return value
        return None


@dataclass
class FetchReport:
    uri: str
    path: Path  # the file (single object) or directory (prefix) that now holds the data
    manifest: Path
    downloaded: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    bytes_downloaded: int = 0


@dataclass
class UploadReport:
    uri: str
    uploaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0


# -- public API -------------------------------------------------------------------


def fetch(
    uri: str,
    dest: Path | str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    options: S3Options | None = None,
    transfer: TransferSettings | None = None,
    show_progress: bool | None = None,
    client: Any = None,
) -> Path:
    """Download `s3://bucket/key` (a file) or `s3://bucket/prefix/` (a tree) into `dest`.

    A single object lands at `dest`, or at `dest/NAME` when `dest` is a directory
    (or ends with '/'). A prefix (or a key that only exists as a prefix) is
    mirrored under `dest`. Returns the path that now holds the data.
    """
    return fetch_detailed(
        uri,
        dest,
        endpoint_url=endpoint_url,
        region=region,
        options=options,
        transfer=transfer,
        show_progress=show_progress,
        client=client,
    ).path


def fetch_detailed(
    uri: str,
    dest: Path | str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    options: S3Options | None = None,
    transfer: TransferSettings | None = None,
    show_progress: bool | None = None,
    client: Any = None,
) -> FetchReport:
    """`fetch`, returning what was downloaded, reused from cache and removed."""
    loc = parse_s3_uri(uri)
    transfer = transfer or TransferSettings()
    client = client or make_client(_options(options, endpoint_url, region))
    endpoint = endpoint_of(client)
    loc, objects, single = _plan(client, loc, endpoint)
    layout = _Layout.for_fetch(loc, Path(dest), objects, single)

    with _locked(layout.lock):
        state = _load_state(layout)
        report = FetchReport(uri=loc.uri, path=layout.root, manifest=layout.manifest)
        jobs: list[_Job] = []
        done: dict[str, dict[str, Any]] = {}
        for obj in objects:
            local = layout.local_path(obj.key)
            _remove_stale_temps(local)
            entry = state.get(obj.key)
            if entry is not None and _is_cached(obj, entry, local):
                done[obj.key] = entry
                report.cached.append(obj.key)
            else:
                jobs.append(_Job(obj, local))
        if jobs:
            with _Journal(layout.journal) as journal, _progress(show_progress, loc.uri) as bar:
                bar.add(sum(j.obj.size for j in jobs), len(jobs))

                def finished(job: _Job) -> None:
                    entry = _entry(job.obj, job.local, layout)
                    journal.write(entry)
                    done[job.obj.key] = entry
                    report.downloaded.append(job.obj.key)
                    report.bytes_downloaded += job.obj.size

                _download_all(client, loc, jobs, transfer, bar, endpoint, finished)
        if not single:
            report.removed = _remove_deleted(layout, state, {o.key for o in objects})
        _write_manifest(layout, loc, endpoint, [done[o.key] for o in objects])
    log.info(
        "fetched %s → %s: %d downloaded (%d bytes), %d cached, %d removed",
        loc.uri,
        layout.root,
        len(report.downloaded),
        report.bytes_downloaded,
        len(report.cached),
        len(report.removed),
    )
    return report


def resolve_uri(uri: str | os.PathLike[str], **kwargs: Any) -> Path:
    """A local path for a config's dataset/model location.

    `s3://bucket/key` is fetched (cached by ETag) into
    `$FINETUNE_CACHE/s3/<bucket>/<key>`; anything else is returned as a local path.
    Keyword arguments are those of `fetch` (endpoint_url, region, options, ...).
    """
    if not is_s3_uri(uri):
        return Path(os.fspath(uri)).expanduser()
    from finetune_runtime.tiny import cache_root

    loc = parse_s3_uri(str(uri))
    rel = _safe_relpath(loc.key.rstrip("/"), loc.uri) if loc.key.strip("/") else None
    dest = cache_root() / "s3" / loc.bucket
    if rel is not None:
        dest = dest / rel
    kwargs.setdefault("show_progress", None)
    return fetch(str(uri), dest, **kwargs)


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
    loc = parse_s3_uri(uri)
    transfer = transfer or TransferSettings()
    client = client or make_client(_options(options, endpoint_url, region))
    endpoint = endpoint_of(client)
    if src.is_file():
        key = loc.key + src.name if loc.is_prefix else loc.key
        files = [(src, key)]
        root = S3Location(loc.bucket, key)
    elif src.is_dir():
        loc = loc.as_prefix()
        root = loc
        files = [
            (path, loc.key + path.relative_to(src).as_posix())
            for path in sorted(src.rglob("*"))
            if path.is_file() and not _is_state_file(path.name)
        ]
    else:
        raise FetchError(f"cannot upload {src}: no such file or directory")
    report = UploadReport(uri=root.uri)
    cfg = transfer.s3transfer_config()
    todo: list[tuple[Path, str]] = []
    for path, key in files:
        if _remote_matches(client, loc.bucket, key, path, cfg, endpoint):
            report.unchanged.append(key)
        else:
            todo.append((path, key))
    if todo:
        with _progress(show_progress, f"upload {root.uri}") as bar:
            bar.add(sum(p.stat().st_size for p, _ in todo), len(todo))
            _upload_all(client, loc.bucket, todo, transfer, bar, endpoint, report)
    log.info(
        "uploaded %s → %s: %d uploaded (%d bytes), %d unchanged",
        src,
        root.uri,
        len(report.uploaded),
        report.bytes_uploaded,
        len(report.unchanged),
    )
    return report


# -- CLI glue (wired by finetune_runtime.cli) ------------------------------------------


def add_fetch_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `finetune fetch URI DEST [--endpoint-url U] [--region R] [--upload]`."""
    parser.add_argument(
        "uri", metavar="URI", help="s3://BUCKET/KEY (a file) or s3://BUCKET/PREFIX/"
    )
    parser.add_argument("dest", metavar="DEST", help="local file or directory")
    parser.add_argument(
        "--endpoint-url",
        help="S3-compatible endpoint (MinIO, Ceph); default $AWS_ENDPOINT_URL or AWS",
    )
    parser.add_argument("--region", help="bucket region; default $AWS_REGION / boto3's config")
    parser.add_argument(
        "--upload",
        action="store_true",
        help="the other way round: upload DEST (a file or directory) to URI",
    )
    parser.add_argument(
        "--addressing-style",
        choices=ADDRESSING_STYLES,
        help="bucket addressing; default path-style with a custom endpoint, else auto",
    )
    parser.add_argument(
        "--path-style",
        dest="addressing_style",
        action="store_const",
        const="path",
        help="same as --addressing-style path",
    )
    parser.add_argument(
        "--no-sign-request", action="store_true", help="anonymous access to a public bucket"
    )
    parser.add_argument(
        "--max-attempts", type=int, help="attempts per request (botocore retries, default 5)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=TransferSettings.max_concurrency,
        help="parallel requests",
    )
    parser.add_argument(
        "--chunk-size-mb",
        type=int,
        default=TransferSettings.multipart_chunksize // MiB,
        help="multipart part size in MiB",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_fetch(args: argparse.Namespace) -> int:
    """Run `finetune fetch` from parsed arguments; prints the result, returns the exit code."""
    options = S3Options(
        endpoint_url=args.endpoint_url,
        region=args.region,
        addressing_style=args.addressing_style,
        anonymous=args.no_sign_request,
        max_attempts=args.max_attempts,
    )
    chunk = max(5, args.chunk_size_mb) * MiB
    transfer = TransferSettings(
        multipart_threshold=max(chunk, TransferSettings.multipart_threshold),
        multipart_chunksize=chunk,
        max_concurrency=max(1, args.concurrency),
    )
    show = False if args.no_progress else None
    try:
        if args.upload:
            up = upload(args.dest, args.uri, options=options, transfer=transfer, show_progress=show)
            print(
                f"uploaded {len(up.uploaded)} file(s), {len(up.unchanged)} unchanged → {up.uri}",
                file=sys.stderr,
            )
            print(up.uri)
        else:
            rep = fetch_detailed(
                args.uri, args.dest, options=options, transfer=transfer, show_progress=show
            )
            print(
                f"fetched {len(rep.downloaded)} object(s) ({_human(rep.bytes_downloaded)}), "
                f"{len(rep.cached)} cached, {len(rep.removed)} removed → {rep.path}",
                file=sys.stderr,
            )
            print(rep.path)
    except FetchError as exc:
        print(f"finetune fetch: error: {redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    return 0


# -- planning -----------------------------------------------------------------------


def _options(options: S3Options | None, endpoint_url: str | None, region: str | None) -> S3Options:
    options = options or S3Options()
    if endpoint_url:
        options = dataclasses.replace(options, endpoint_url=endpoint_url)
    if region:
        options = dataclasses.replace(options, region=region)
    return options


def _plan(
    client: Any, loc: S3Location, endpoint: str
) -> tuple[S3Location, list[RemoteObject], bool]:
    """What to fetch: (location, objects, single?). A key with no object is tried as a prefix."""
    if not loc.is_prefix:
        try:
            head = client.head_object(Bucket=loc.bucket, Key=loc.key)
        except Exception as exc:
            code, status = client_error_info(exc)
            if status != 404 and code not in ("404", "NoSuchKey"):
                raise describe_error(
                    exc, action="fetching", uri=loc.uri, endpoint=endpoint
                ) from None
        else:
            obj = RemoteObject(
                key=loc.key,
                size=int(head["ContentLength"]),
                etag=head["ETag"],
                last_modified=_iso(head.get("LastModified")),
            )
            return loc, [obj], True
        prefix = loc.as_prefix()
        objects = _list(client, prefix, endpoint)
        if not objects:
            raise FetchError(
                f"fetching {loc.uri} failed (NoSuchKey, HTTP 404): no object with this key "
                f"and no objects under {prefix.uri} at {endpoint}; check the key and that it "
                "was uploaded"
            )
        return prefix, objects, False
    objects = _list(client, loc, endpoint)
    if not objects:
        raise FetchError(
            f"fetching {loc.uri} failed: no objects under this prefix at {endpoint}; "
            "check the prefix (keys are case-sensitive) and that the data was uploaded"
        )
    return loc, objects, False


def _list(client: Any, loc: S3Location, endpoint: str) -> list[RemoteObject]:
    objects: list[RemoteObject] = []
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.key)
        for page in pages:
            for item in page.get("Contents", []):
                if item["Key"].endswith("/"):
                    continue  # "directory" marker objects
                objects.append(
                    RemoteObject(
                        key=item["Key"],
                        size=int(item["Size"]),
                        etag=item["ETag"],
                        last_modified=_iso(item.get("LastModified")),
                    )
                )
    except FetchError:
        raise
    except Exception as exc:
        raise describe_error(exc, action="listing", uri=loc.uri, endpoint=endpoint) from None
    return objects


def _safe_relpath(rel: str, uri: str) -> PurePosixPath:
    parts = [p for p in rel.split("/") if p]
    if rel.startswith("/") or not parts or any(p in (".", "..") for p in parts):
        raise FetchError(
            f"refusing to fetch {uri}: key {rel!r} would land outside the destination "
            "(empty, absolute, '.' or '..' path components)"
        )
    return PurePosixPath(*parts)


@dataclass(frozen=True)
class _Layout:
    root: Path
    prefix: str  # the common key prefix ("" for a single object)
    single: bool
    manifest: Path
    journal: Path
    lock: Path

    @classmethod
    def for_fetch(
        cls, loc: S3Location, dest: Path, objects: list[RemoteObject], single: bool
    ) -> _Layout:
        if single:
            name = _safe_relpath(loc.key, loc.uri).name
            target = dest / name if dest.is_dir() or str(dest).endswith(os.sep) else dest
            state = target.parent / f".{target.name}{PREFIX_STATE}"
            layout = cls(
                root=target,
                prefix=loc.key,
                single=True,
                manifest=Path(f"{state}.json"),
                journal=Path(f"{state}.journal"),
                lock=Path(f"{state}.lock"),
            )
        else:
            state = dest / PREFIX_STATE
            layout = cls(
                root=dest,
                prefix=loc.key,
                single=False,
                manifest=Path(f"{state}.json"),
                journal=Path(f"{state}.journal"),
                lock=Path(f"{state}.lock"),
            )
        for obj in objects:  # validate every key before touching the disk
            layout.local_path(obj.key)
        return layout

    def local_path(self, key: str) -> Path:
        if self.single:
            return self.root
        rel = _safe_relpath(key[len(self.prefix) :], f"s3://…/{key}")
        if _is_state_file(rel.name):
            raise FetchError(f"refusing to fetch key {key!r}: its name is reserved for fetch state")
        return self.root.joinpath(*rel.parts)


def _is_state_file(name: str) -> bool:
    return name.startswith(".") and STATE_MARK in name


# -- cache state ------------------------------------------------------------------


def _load_state(layout: _Layout) -> dict[str, dict[str, Any]]:
    """Entries from the last complete manifest plus any journal of an interrupted run."""
    entries: dict[str, dict[str, Any]] = {}
    try:
        data = json.loads(layout.manifest.read_text())
        if data.get("version") == MANIFEST_VERSION:
            entries.update({e["key"]: e for e in data.get("objects", [])})
    except FileNotFoundError:
        pass
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning(
            "ignoring unreadable fetch manifest %s; everything is re-downloaded", layout.manifest
        )
    with contextlib.suppress(FileNotFoundError), layout.journal.open() as fh:
        for line in fh:
            try:
                entry = json.loads(line)
                entries[entry["key"]] = entry
            except (ValueError, KeyError, TypeError):
                break  # a torn last line of an interrupted run
    return entries


def _is_cached(obj: RemoteObject, entry: dict[str, Any], local: Path) -> bool:
    if entry.get("etag") != obj.etag_value or entry.get("size") != obj.size:
        return False
    try:
        st = local.stat()
    except OSError:
        return False
    return st.st_size == obj.size and st.st_mtime_ns == entry.get("mtimeNs")


def _entry(obj: RemoteObject, local: Path, layout: _Layout) -> dict[str, Any]:
    rel = local.name if layout.single else local.relative_to(layout.root).as_posix()
    return {
        "key": obj.key,
        "path": rel,
        "etag": obj.etag_value,
        "size": obj.size,
        "lastModified": obj.last_modified,
        "mtimeNs": local.stat().st_mtime_ns,
    }


class _Journal:
    """Append-only record of objects finished during this run (crash-resume)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: Any = None

    def __enter__(self) -> _Journal:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a")
        return self

    def write(self, entry: dict[str, Any]) -> None:
        self._fh.write(json.dumps(entry) + "\n")
        self._fh.flush()

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def _write_manifest(
    layout: _Layout, loc: S3Location, endpoint: str, entries: list[dict[str, Any]]
) -> None:
    doc = {
        "version": MANIFEST_VERSION,
        "source": loc.uri,
        "endpoint": endpoint,
        "fetchedAt": datetime.now(UTC).isoformat(),
        "complete": True,
        "objects": entries,
    }
    layout.manifest.parent.mkdir(parents=True, exist_ok=True)
    tmp = layout.manifest.with_name(layout.manifest.name + f".{secrets.token_hex(4)}{TEMP_SUFFIX}")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, layout.manifest)
    with contextlib.suppress(FileNotFoundError):
        layout.journal.unlink()


def _remove_deleted(layout: _Layout, state: dict[str, dict[str, Any]], live: set[str]) -> list[str]:
    """Delete files this fetcher wrote earlier for keys that no longer exist (never others)."""
    removed = []
    for key, entry in state.items():
        if key in live or not key.startswith(layout.prefix):
            continue
        try:
            local = layout.local_path(key)
            if local.stat().st_mtime_ns != entry.get("mtimeNs"):
                continue  # changed locally since: not ours to delete
            local.unlink()
        except (OSError, FetchError):
            continue
        removed.append(key)
        parent = local.parent
        while parent != layout.root and parent.is_relative_to(layout.root):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
    return removed


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another fetch into %s to finish", path.parent)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _temp_for(local: Path) -> Path:
    return local.parent / f".{local.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def _remove_stale_temps(local: Path) -> None:
    """Leftovers of a killed run (ours or s3transfer's inside them). Safe: we hold the lock."""
    if local.parent.is_dir():
        for stale in local.parent.glob(f".{local.name}.*{TEMP_SUFFIX}*"):
            with contextlib.suppress(OSError):
                stale.unlink()


# -- transfers ----------------------------------------------------------------------


@dataclass
class _Job:
    obj: RemoteObject
    local: Path
    tmp: Path | None = None


def _download_all(
    client: Any,
    loc: S3Location,
    jobs: list[_Job],
    transfer: TransferSettings,
    bar: _Bar,
    endpoint: str,
    finished: Any,
) -> None:
    from s3transfer.manager import TransferManager

    pending = jobs
    with TransferManager(client, transfer.s3transfer_config()) as manager:
        for attempt in range(1, max(1, transfer.attempts) + 1):
            submitted = []
            try:
                for job in pending:
                    job.local.parent.mkdir(parents=True, exist_ok=True)
                    job.tmp = _temp_for(job.local)
                    future = manager.download(
                        loc.bucket,
                        job.obj.key,
                        str(job.tmp),
                        subscribers=[_KnownObject(job.obj), bar.subscriber(job.obj.key)],
                    )
                    submitted.append((job, future))
                failed: list[tuple[_Job, BaseException]] = []
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
                    redact(_short(error)),
                    attempt + 1,
                    transfer.attempts,
                )
                code, _ = client_error_info(error)
                if code == "PreconditionFailed" or "ETag" in str(error):
                    job.obj = _refresh(client, loc.bucket, job.obj, endpoint)
            _sleep_backoff(transfer.backoff, attempt)
            pending = [job for job, _ in failed]


def _refresh(client: Any, bucket: str, obj: RemoteObject, endpoint: str) -> RemoteObject:
    """The object changed while we read it: fetch its new size and ETag."""
    try:
        head = client.head_object(Bucket=bucket, Key=obj.key)
    except Exception as exc:
        raise describe_error(
            exc, action="downloading", uri=f"s3://{bucket}/{obj.key}", endpoint=endpoint
        ) from None
    return RemoteObject(
        obj.key, int(head["ContentLength"]), head["ETag"], _iso(head.get("LastModified"))
    )


def _verify(client: Any, bucket: str, job: _Job) -> None:
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


def _upload_all(
    client: Any,
    bucket: str,
    files: list[tuple[Path, str]],
    transfer: TransferSettings,
    bar: _Bar,
    endpoint: str,
    report: UploadReport,
) -> None:
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
                    report.uploaded.append(key)
                    report.bytes_uploaded += path.stat().st_size
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
                log.warning("retrying upload of %s after %s", key, redact(_short(error)))
            _sleep_backoff(transfer.backoff, attempt)
            pending = [(p, k) for p, k, _ in failed]


def _remote_matches(
    client: Any, bucket: str, key: str, path: Path, cfg: Any, endpoint: str
) -> bool:
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
    return head["ETag"].strip('"') == _local_etag(path, size, cfg)


def _local_etag(path: Path, size: int, cfg: Any) -> str:
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


def _sleep_backoff(base: float, attempt: int) -> None:
    delay = min(base * (2 ** (attempt - 1)), 30.0)
    time.sleep(delay * random.uniform(0.5, 1.0))


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


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


class _Bar:
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
def _progress(show: bool | None, description: str) -> Iterator[_Bar]:
    if show is None:
        show = sys.stderr.isatty()
    if not show:
        yield _Bar(None, description)
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
        yield _Bar(progress, description)
