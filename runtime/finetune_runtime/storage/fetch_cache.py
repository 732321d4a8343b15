"""Local side of a fetch: where objects land, the ETag manifest, the journal, the lock.

Everything here is about files on disk, none of it talks to S3:
- `Layout` maps keys to local paths (refusing keys that would escape the
  destination) and names the hidden state files.
- The manifest (written last, atomically) and the journal (appended as objects
  finish) record key, ETag, size and local mtime, so a later fetch knows what is
  already in place and an interrupted one resumes.
- `locked` serialises fetches into one destination (flock), so two ranks sharing
  a cache download once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from finetune_runtime.errors import FetchError
from finetune_runtime.storage.s3 import RemoteObject, S3Location

log = logging.getLogger("finetune_runtime.storage.fetch")

MANIFEST_VERSION = 1
STATE_MARK = ".finetune-"  # every hidden file a fetch writes carries it
PREFIX_STATE = ".finetune-fetch"
TEMP_SUFFIX = ".finetune-part"


def safe_relpath(rel: str, uri: str) -> PurePosixPath:
    parts = [p for p in rel.split("/") if p]
    if rel.startswith("/") or not parts or any(p in (".", "..") for p in parts):
        raise FetchError(
            f"refusing to fetch {uri}: key {rel!r} would land outside the destination "
            "(empty, absolute, '.' or '..' path components)"
        )
    if "\x00" in rel:  # S3 allows it (URL-encoded listings); no local file name does
        raise FetchError(f"refusing to fetch {uri}: key {rel!r} contains a NUL byte")
    return PurePosixPath(*parts)


@dataclass(frozen=True)
class Layout:
    root: Path
    prefix: str  # the common key prefix ("" for a single object)
    single: bool
    manifest: Path
    journal: Path
    lock: Path

    @classmethod
    def for_fetch(
        cls, loc: S3Location, dest: Path | str, objects: list[RemoteObject], single: bool
    ) -> Layout:
        """`dest` stays a str until here: Path() would drop a trailing '/' meaning "into"."""
        into_dir = str(dest).endswith(("/", os.sep))
        dest = Path(dest)
        if single:
            name = safe_relpath(loc.key, loc.uri).name
            root = dest / name if into_dir or dest.is_dir() else dest
            state = root.parent / f".{root.name}{PREFIX_STATE}"
        else:
            root, state = dest, dest / PREFIX_STATE
        layout = cls(
            root=root,
            prefix=loc.key,
            single=single,
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
        rel = safe_relpath(key[len(self.prefix) :], f"s3://…/{key}")
        if is_state_file(rel.name):
            raise FetchError(f"refusing to fetch key {key!r}: its name is reserved for fetch state")
        return self.root.joinpath(*rel.parts)


def is_state_file(name: str) -> bool:
    return name.startswith(".") and STATE_MARK in name


def load_state(layout: Layout) -> dict[str, dict[str, Any]]:
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


def is_cached(obj: RemoteObject, entry: dict[str, Any], local: Path) -> bool:
    if entry.get("etag") != obj.etag_value or entry.get("size") != obj.size:
        return False
    try:
        st = local.stat()
    except OSError:
        return False
    return st.st_size == obj.size and st.st_mtime_ns == entry.get("mtimeNs")


def make_entry(obj: RemoteObject, local: Path, layout: Layout) -> dict[str, Any]:
    rel = local.name if layout.single else local.relative_to(layout.root).as_posix()
    return {
        "key": obj.key,
        "path": rel,
        "etag": obj.etag_value,
        "size": obj.size,
        "lastModified": obj.last_modified,
        "mtimeNs": local.stat().st_mtime_ns,
    }


class Journal:
    """Append-only record of objects finished during this run (crash-resume)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: Any = None

    def __enter__(self) -> Journal:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a")
        return self

    def write(self, entry: dict[str, Any]) -> None:
        self._fh.write(json.dumps(entry) + "\n")
        self._fh.flush()

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def write_manifest(
    layout: Layout, loc: S3Location, endpoint: str, entries: list[dict[str, Any]]
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


def remove_deleted(layout: Layout, state: dict[str, dict[str, Any]], live: set[str]) -> list[str]:
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
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another fetch into %s to finish", path.parent)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def temp_for(local: Path) -> Path:
    return local.parent / f".{local.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def remove_stale_temps(local: Path) -> None:
    """Leftovers of a killed run (ours or s3transfer's inside them). Safe: we hold the lock."""
    if local.parent.is_dir():
        for stale in local.parent.glob(f".{local.name}.*{TEMP_SUFFIX}*"):
            with contextlib.suppress(OSError):
                stale.unlink()
