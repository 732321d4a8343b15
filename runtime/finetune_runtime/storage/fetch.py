"""Fetch S3 objects and prefixes to local files, safely and only once.

The library behind `finetune fetch` (commands/fetch.py), `resolve_uri` (a config's
`s3://` dataset or model) and the init containers the operator adds to worker pods.

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

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_runtime.contract import cache_root
from finetune_runtime.errors import FetchError
from finetune_runtime.storage.fetch_cache import (
    Journal,
    Layout,
    is_cached,
    load_state,
    locked,
    make_entry,
    remove_deleted,
    remove_stale_temps,
    safe_relpath,
    write_manifest,
)
from finetune_runtime.storage.s3 import (
    RemoteObject,
    S3Location,
    S3Options,
    endpoint_of,
    is_s3_uri,
    make_client,
    options_with,
    parse_s3_uri,
)
from finetune_runtime.storage.s3_errors import client_error_info, describe_error
from finetune_runtime.storage.transfer import Job, TransferSettings, download_all, progress_bar

__all__ = ["FetchReport", "TransferSettings", "fetch", "fetch_detailed", "resolve_uri"]

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
    client = client or make_client(options_with(options, endpoint_url, region))
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
    loc = parse_s3_uri(str(uri))
    rel = safe_relpath(loc.key.rstrip("/"), loc.uri) if loc.key.strip("/") else None
    dest = cache_root() / "s3" / loc.bucket
    if rel is not None:
        dest = dest / rel
    kwargs.setdefault("show_progress", None)
    return fetch(str(uri), dest, **kwargs)


# -- planning -----------------------------------------------------------------------


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
