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
import dataclasses
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_runtime.errors import FetchError
from finetune_runtime.storage.fetch_cache import (
    Journal,
    Layout,
    is_cached,
    is_state_file,
    load_state,
    locked,
    make_entry,
    remove_deleted,
    remove_stale_temps,
    safe_relpath,
    write_manifest,
)
from finetune_runtime.storage.s3 import (
    ADDRESSING_STYLES,
    RemoteObject,
    S3Location,
    S3Options,
    client_error_info,
    describe_error,
    endpoint_of,
    is_s3_uri,
    make_client,
    parse_s3_uri,
    redact,
)
from finetune_runtime.storage.transfer import (
    Job,
    MiB,
    TransferSettings,
    download_all,
    progress_bar,
    remote_matches,
    upload_all,
)

__all__ = [
    "FetchReport",
    "TransferSettings",
    "UploadReport",
    "add_fetch_arguments",
    "fetch",
    "fetch_detailed",
    "resolve_uri",
    "run_fetch",
    "upload",
]

log = logging.getLogger(__name__)


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
    layout = Layout.for_fetch(loc, dest, objects, single)

    with locked(layout.lock):
        state = load_state(layout)
        report = FetchReport(uri=loc.uri, path=layout.root, manifest=layout.manifest)
        jobs: list[Job] = []
        done: dict[str, dict[str, Any]] = {}
        for obj in objects:
            local = layout.local_path(obj.key)
            remove_stale_temps(local)
            entry = state.get(obj.key)
            if entry is not None and is_cached(obj, entry, local):
                done[obj.key] = entry
                report.cached.append(obj.key)
            else:
                jobs.append(Job(obj, local))
        if jobs:
            with Journal(layout.journal) as journal, progress_bar(show_progress, loc.uri) as bar:
                bar.add(sum(j.obj.size for j in jobs), len(jobs))

                def finished(job: Job) -> None:
                    entry = make_entry(job.obj, job.local, layout)
                    journal.write(entry)
                    done[job.obj.key] = entry
                    report.downloaded.append(job.obj.key)
                    report.bytes_downloaded += job.obj.size

                download_all(client, loc, jobs, transfer, bar, endpoint, finished)
        if not single:
            report.removed = remove_deleted(layout, state, {o.key for o in objects})
        write_manifest(layout, loc, endpoint, [done[o.key] for o in objects])
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
    from finetune_runtime.model.tiny import cache_root

    loc = parse_s3_uri(str(uri))
    rel = safe_relpath(loc.key.rstrip("/"), loc.uri) if loc.key.strip("/") else None
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
            if path.is_file() and not is_state_file(path.name)
        ]
    else:
        raise FetchError(f"cannot upload {src}: no such file or directory")
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
            return loc, [RemoteObject.from_head(loc.key, head)], True
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
                objects.append(RemoteObject.from_listing(item))
    except FetchError:
        raise
    except Exception as exc:
        raise describe_error(exc, action="listing", uri=loc.uri, endpoint=endpoint) from None
    return objects


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
