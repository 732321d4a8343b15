"""Find a dataset file and read its rows, remembering where each row was written.

JSONL rows are located by line; a JSON array's items by their index *and* the line
where the item starts, so every later error can say `file:line`. Nothing here
knows about prompt formats.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_runtime.errors import DatasetError

DATA_SUFFIXES = (".jsonl", ".json", ".ndjson")
# `org/name` or `name` with no file suffix: how hub dataset ids look.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class Row:
    """One raw record: its data and where it came from."""

    data: Any
    line: int  # 1-based line where the record starts; 0 for Arrow rows (no lines)
    index: int  # 0-based position in the file (JSONL: among non-blank lines)
    label: str  # how errors refer to it: "line 7", "item [3]" or "row 3"


def resolve_dataset_path(path: str, base_dir: Path | None = None) -> Path:
    """Return a local path for a dataset `path` as written in the config.

    Relative paths are relative to `base_dir` (the config file's directory);
    `s3://` URIs are fetched into the local cache.
    """
    if path.startswith("s3://"):
        try:
            from finetune_runtime.storage.fetch import resolve_uri
        except ImportError as exc:  # the fetch module ships with the runtime extra
            raise DatasetError(
                f"cannot read {path}: S3 support (finetune_runtime.storage.fetch) "
                f"is unavailable: {exc}",
                path,
            ) from exc
        return Path(resolve_uri(path))
    if "://" in path:
        scheme = path.split("://", 1)[0]
        raise DatasetError(
            f"unsupported URI scheme {scheme!r}: use a local .json/.jsonl file or an s3:// URI",
            path,
        )
    candidate = Path(path).expanduser()
    if not candidate.is_absolute() and base_dir is not None:
        candidate = Path(base_dir) / candidate
    if candidate.exists():
        return candidate
    if looks_like_hub_id(path):
        raise DatasetError(
            f"no local file {str(candidate)!r}, and {path!r} looks like a Hugging Face hub "
            "dataset id",
            path,
        )
    where = f" (relative paths are resolved from {base_dir})" if base_dir is not None else ""
    raise DatasetError(f"dataset file not found: {candidate}{where}", path)


def looks_like_hub_id(path: str) -> bool:
    """`org/name` or `name` with no data-file suffix, as hub dataset ids are written."""
    return (
        not path.endswith(DATA_SUFFIXES)
        and "://" not in path
        and bool(_HUB_ID.match(path))
        and not path.startswith(".")
    )


def dataset_files(local: Path) -> list[Path]:
    """A file, or every .json/.jsonl file directly inside a directory (an S3 prefix)."""
    if local.is_dir():
        files = sorted(p for p in local.iterdir() if p.is_file() and p.suffix in DATA_SUFFIXES)
        if not files:
            raise DatasetError(
                f"directory contains no {', '.join(DATA_SUFFIXES)} files", str(local)
            )
        return files
    return [local]


def read_rows(path: Path, display: str | None = None) -> list[Row]:
    """Read every record of a JSON-array or JSON-lines file (UTF-8)."""
    shown = display or str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read dataset: {exc.strerror}", shown) from exc
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = bom + exc.start  # exc.start counts from after the BOM
        line = raw.count(b"\n", 0, at) + 1
        raise DatasetError(
            f"not UTF-8 text (invalid byte 0x{raw[at]:02x}); re-encode the file as UTF-8",
            shown,
            line,
        ) from exc
    stripped = text.lstrip()
    if not stripped:
        raise DatasetError("dataset file is empty", shown)
    if stripped[0] == "[" and path.suffix != ".jsonl":
        rows = _read_json_array(text, shown)
    else:
        rows = _read_jsonl(text, shown)
    if not rows:
        raise DatasetError("dataset contains no records", shown)
    return rows


def load_rows(path: str, base_dir: Path | None = None) -> list[tuple[str, Row]]:
    """Every raw row of a dataset entry, each with the file name errors should show."""
    local = resolve_dataset_path(path, base_dir)
    remote = path.startswith("s3://")
    files = dataset_files(local)
    rows: list[tuple[str, Row]] = []
    for f in files:
        shown = (path if len(files) == 1 else f"{path.rstrip('/')}/{f.name}") if remote else str(f)
        rows.extend((shown, row) for row in read_rows(f, shown))
    return rows


def iter_jsonl_rows(path: Path, shown: str) -> Iterator[Row]:
    """The records of a JSON-lines file, streamed one line at a time (bounded memory).

    Same rows and errors as `read_rows`, except that the first bad line is reported
    even when a later line is not UTF-8.
    """
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise DatasetError(f"cannot read dataset: {exc.strerror}", shown) from exc
    count = 0
    with fh:
        for number, raw in enumerate(fh, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetError(
                    f"not UTF-8 text (invalid byte 0x{raw[exc.start]:02x}); re-encode the file "
                    "as UTF-8",
                    shown,
                    number,
                ) from exc
            if not line.strip():
                continue
            yield Row(_parse_line(line, shown, number), number, count, f"line {number}")
            count += 1
    if count == 0:
        raise DatasetError("dataset file is empty", shown)


def _parse_line(line: str, shown: str, number: int) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"malformed JSON at column {exc.colno}: {exc.msg} (each line must be one JSON object)",
            shown,
            number,
        ) from exc
    except (ValueError, RecursionError) as exc:
        raise DatasetError(_unreadable(exc), shown, number) from exc


def _read_jsonl(text: str, shown: str) -> list[Row]:
    rows: list[Row] = []
    # Only '\n' ends a line: JSON strings may hold U+2028, U+0085, ... (str.splitlines
    # would break such a row apart); a '\r' before it is JSON whitespace.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        rows.append(Row(_parse_line(line, shown, number), number, len(rows), f"line {number}"))
    return rows


def _read_json_array(text: str, shown: str) -> list[Row]:
    """Decode a top-level array item by item, so each item keeps its line number."""
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    assert text[pos] == "["
    pos = _skip_ws(text, pos + 1)
    rows: list[Row] = []
    if pos < len(text) and text[pos] == "]":
        return rows
    while True:
        line = text.count("\n", 0, pos) + 1
        try:
            data, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"item [{len(rows)}]: malformed JSON at column {exc.colno}: {exc.msg}",
                shown,
                exc.lineno,
            ) from exc
        except (ValueError, RecursionError) as exc:
            raise DatasetError(f"item [{len(rows)}]: {_unreadable(exc)}", shown, line) from exc
        rows.append(Row(data, line, len(rows), f"item [{len(rows)}]"))
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            break
        bad_line = text.count("\n", 0, pos) + 1
        raise DatasetError(
            f"malformed JSON after item [{len(rows) - 1}]: expected ',' or ']'", shown, bad_line
        )
    if _skip_ws(text, pos + 1) != len(text):
        raise DatasetError(
            "unexpected content after the closing ']' of the JSON array",
            shown,
            text.count("\n", 0, pos) + 1,
        )
    return rows


def _unreadable(exc: ValueError | RecursionError) -> str:
    """Valid JSON syntax that Python's decoder still refuses."""
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply to read; flatten the record"
    return f"unreadable JSON value ({str(exc).split(':')[0]})"  # e.g. a 5000-digit number


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos
