"""Where a dataset entry's rows come from, read in bounded chunks.

Two kinds of source:

- JSON/JSONL files (local, a folder of them, or fetched from S3): read by our own
  readers, JSONL streamed line by line, so every bad row is reported as `file:line`.
- Everything else goes through the `datasets` library: hub dataset ids (from the
  local cache when HF_HUB_OFFLINE=1), .parquet/.csv/.arrow files and folders,
  `save_to_disk` folders. Their rows are memory-mapped Arrow; errors name `row N`.

`classify` (finetune_runtime.data.source_kind) is the pure decision; `open_source`
does the I/O.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from finetune_runtime.config import DatasetSettings
from finetune_runtime.data.readers import (
    DATA_SUFFIXES,
    Row,
    iter_jsonl_rows,
    looks_like_hub_id,
    read_rows,
    resolve_dataset_path,
)
from finetune_runtime.data.source_kind import SourceSpec, classify
from finetune_runtime.errors import DatasetError

HASH_BLOCK = 1 << 20


class Source:
    """The rows of one dataset entry: count, first row, chunks, content fingerprint."""

    def __init__(self, spec: SourceSpec, settings: DatasetSettings, remote: bool) -> None:
        self.spec = spec
        self.settings = settings
        self.remote = remote
        self._dataset: Any = None
        self._files: list[Path] | None = None

    # -- JSON / JSONL -------------------------------------------------------

    def _json_files(self) -> list[Path]:
        if self._files is None:
            local = Path(self.spec.location)
            if local.is_dir():
                self._files = sorted(
                    p for p in local.iterdir() if p.is_file() and p.suffix in DATA_SUFFIXES
                )
            else:
                self._files = [local]
        return self._files

    def _shown(self, f: Path) -> str:
        files = self._json_files()
        if not self.remote:
            return str(f)
        path = self.settings.path
        return (
            path
            if len(files) == 1 and not Path(self.spec.location).is_dir()
            else (f"{path.rstrip('/')}/{f.name}")
        )

    def _file_rows(self, f: Path) -> Iterator[Row]:
        if _is_json_array(f):
            yield from read_rows(f, self._shown(f))
        else:
            yield from iter_jsonl_rows(f, self._shown(f))

    # -- datasets library ---------------------------------------------------

    def dataset(self) -> Any:
        """The `datasets.Dataset` (memory-mapped Arrow) of a non-JSON source."""
        if self._dataset is None:
            from finetune_runtime.data.hf import load_hf_dataset

            self._dataset = load_hf_dataset(self.spec, self.settings)
        return self._dataset

    # -- common ---------------------------------------------------------------

    def count(self) -> int:
        """Rows in the source (JSONL: non-blank lines, counted without parsing)."""
        if self.spec.kind != "rows":
            return len(self.dataset())
        total = 0
        for f in self._json_files():
            total += len(read_rows(f, self._shown(f))) if _is_json_array(f) else _count_lines(f)
        return total

    def chunks(self, size: int) -> Iterator[list[tuple[str, Row]]]:
        """Every row, `size` at a time, each with the file name its errors show."""
        chunk: list[tuple[str, Row]] = []
        for shown, row in self._rows(size):
            chunk.append((shown, row))
            if len(chunk) >= size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def _rows(self, size: int) -> Iterator[tuple[str, Row]]:
        if self.spec.kind == "rows":
            files = self._json_files()
            if not files:
                raise DatasetError(
                    f"directory contains no {', '.join(DATA_SUFFIXES)} files", self.spec.display
                )
            for f in files:
                shown = self._shown(f)
                for row in self._file_rows(f):
                    yield shown, row
            return
        ds = self.dataset()
        index = 0
        for batch in ds.iter(batch_size=size):
            columns = list(batch)
            for values in zip(*(batch[c] for c in columns), strict=True):
                yield (
                    self.spec.display,
                    Row(dict(zip(columns, values, strict=True)), 0, index, f"row {index}"),
                )
                index += 1

    def first_row(self) -> Any:
        """The first record's data (for format detection), or None when there is none."""
        for _, row in self._rows(1):
            return row.data
        return None

    def fingerprint(self) -> str:
        """A hash of the source's content and of the settings that select it."""
        h = hashlib.sha256()
        s = self.settings
        h.update(repr((self.spec.kind, s.path, s.name, s.split, s.data_files, s.revision)).encode())
        root = Path(self.spec.location)
        for f in self.content_files():
            h.update(str(f.relative_to(root) if f.is_relative_to(root) else f.name).encode())
            with f.open("rb") as fh:
                while block := fh.read(HASH_BLOCK):
                    h.update(block)
        return h.hexdigest()

    def content_files(self) -> list[Path]:
        """The files whose bytes define the rows: the data files themselves for local
        sources (no Arrow conversion needed to check a cache), the Arrow files `datasets`
        maps for hub ids."""
        if self.spec.kind == "rows":
            return self._json_files()
        if self.spec.kind in ("files", "disk"):
            local = Path(self.spec.location)
            if local.is_file():
                return [local]
            return sorted(p for p in local.rglob("*") if p.is_file() and not p.name.startswith("."))
        ds = self.dataset()
        return sorted(Path(c["filename"]) for c in ds.cache_files)


def open_source(settings: DatasetSettings, base_dir: Path | None) -> Source:
    """Resolve a dataset entry (fetching S3 objects into the local cache) to its Source."""
    path = settings.path
    remote = path.startswith("s3://")
    try:
        local: Path | None = resolve_dataset_path(path, base_dir)
    except DatasetError:
        if not looks_like_hub_id(path):
            raise
        local = None
    return Source(classify(path, local, remote), settings, remote)


def _is_json_array(f: Path) -> bool:
    if f.suffix == ".jsonl":
        return False
    with f.open("rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf").lstrip()
        while not head:
            more = fh.read(HASH_BLOCK)
            if not more:
                return False
            head = more.lstrip()
    return head[:1] == b"["


def _count_lines(f: Path) -> int:
    count = 0
    with f.open("rb") as fh:
        for line in fh:
            if line.strip():
                count += 1
    return count


def default_processes() -> int:
    """Every core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
