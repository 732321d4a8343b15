"""Which reader a dataset entry needs: the pure decision from its path and local copy.

Shared by finetune_runtime.data.sources (which opens the source) and
finetune_runtime.data.hf (which reads the `datasets`-library kinds).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from finetune_runtime.data.readers import DATA_SUFFIXES
from finetune_runtime.errors import DatasetError

# File suffix -> the `datasets` builder that reads it.
BUILDERS = {".parquet": "parquet", ".csv": "csv", ".tsv": "csv", ".arrow": "arrow"}
SAVE_TO_DISK_MARKERS = ("state.json", "dataset_dict.json")


@dataclass(frozen=True)
class SourceSpec:
    """How to read one dataset entry: `kind` is rows (our JSON readers), files (a
    datasets builder over local files), disk (load_from_disk) or hub."""

    kind: str
    display: str  # what errors show
    location: str  # local path, or the hub id
    builder: str | None = None


def classify(path: str, local: Path | None, remote: bool) -> SourceSpec:
    """Decide how to read `path` given its local copy (None: not found locally)."""
    if local is None:
        return SourceSpec("hub", path, path)
    if local.is_dir():
        if any((local / marker).is_file() for marker in SAVE_TO_DISK_MARKERS):
            return SourceSpec("disk", path if remote else str(local), str(local))
        suffixes = {p.suffix for p in local.iterdir() if p.is_file() and _is_data(p)}
        if suffixes and suffixes <= set(DATA_SUFFIXES):
            return SourceSpec("rows", path if remote else str(local), str(local))
        builders = {BUILDERS[s] for s in suffixes if s in BUILDERS}
        if len(builders) == 1:
            return SourceSpec("files", path if remote else str(local), str(local), builders.pop())
        found = ", ".join(sorted(suffixes)) or "no data files"
        raise DatasetError(
            f"folder holds {found}: expected .json/.jsonl files, or .parquet, .csv or .arrow "
            "files of one kind, or a save_to_disk folder",
            path if remote else str(local),
        )
    if local.suffix in BUILDERS:
        return SourceSpec(
            "files", path if remote else str(local), str(local), BUILDERS[local.suffix]
        )
    return SourceSpec("rows", path if remote else str(local), str(local))


def _is_data(p: Path) -> bool:
    return not p.name.startswith(".") and p.suffix in (*DATA_SUFFIXES, *BUILDERS)
