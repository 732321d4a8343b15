"""Rows -> token arrays, a chunk at a time, on every core.

A chunk of raw rows becomes two `EncodedChunk`s (train and eval rows) of flat
int32 token ids plus a trained-token mask: labels are always either the token id
or -100 (see finetune_runtime.data.tokenize), so the mask is lossless.

`encode_chunks` keeps chunk order and holds at most a few chunks in flight, so
memory stays bounded however large the dataset is. Worker processes are forked
(they inherit the tokenizer and templates; nothing is pickled but rows).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from finetune_runtime.data.formats import FormatContext, RowError, Segment, row_segments
from finetune_runtime.data.readers import Row
from finetune_runtime.data.tokenize import IGNORE_INDEX, SegmentTokenizer
from finetune_runtime.errors import DatasetError

IN_FLIGHT_PER_PROCESS = 2


@dataclass
class EncodedChunk:
    """Kept examples of one chunk, flattened; `lengths` splits `ids`/`trained`."""

    ids: np.ndarray  # int32
    trained: np.ndarray  # uint8: 1 where the label is the token, 0 where it is -100
    lengths: np.ndarray  # int32, one per kept example
    truncated: int = 0
    dropped: int = 0
    trainable_tokens: int = 0  # trained tokens, not counting each example's first

    def examples(self) -> list[dict[str, list[int]]]:
        """As {"input_ids", "labels"} lists (the in-memory form)."""
        out = []
        start = 0
        labels = np.where(self.trained.astype(bool), self.ids, IGNORE_INDEX)
        for n in self.lengths.tolist():
            out.append(
                {
                    "input_ids": self.ids[start : start + n].tolist(),
                    "labels": labels[start : start + n].tolist(),
                }
            )
            start += n
        return out


@dataclass
class ChunkResult:
    rows: int
    train: EncodedChunk
    eval: EncodedChunk
    error: tuple[str, str | None, int | None] | None = None  # DatasetError's arguments


@dataclass
class ChunkEncoder:
    """Formats, tokenizes and masks rows; picklable only by fork (holds the tokenizer)."""

    ctx: FormatContext
    tokenizer: SegmentTokenizer

    def __call__(self, rows: Sequence[tuple[str, Row]], is_eval: Sequence[bool]) -> ChunkResult:
        try:
            segments = [_segments(shown, row, self.ctx) for shown, row in rows]
        except DatasetError as exc:
            return ChunkResult(len(rows), _empty(), _empty(), (exc.message, exc.path, exc.line))
        encoded = self.tokenizer.encode_many(segments)
        parts: dict[bool, list[Any]] = {False: [], True: []}
        for enc, to_eval in zip(encoded, is_eval, strict=True):
            parts[to_eval].append(enc)
        return ChunkResult(len(rows), _flatten(parts[False]), _flatten(parts[True]))


def _segments(shown: str, row: Row, ctx: FormatContext) -> list[Segment]:
    try:
        return row_segments(row.data, ctx)
    except RowError as exc:
        where = "" if row.label.startswith("line") else f"{row.label}: "
        what = f"field {exc.field!r}: " if exc.field else ""
        raise DatasetError(
            f"{where}{what}{exc.message} (format {ctx.settings.format})", shown, row.line or None
        ) from exc


def _empty() -> EncodedChunk:
    return EncodedChunk(np.zeros(0, np.int32), np.zeros(0, np.uint8), np.zeros(0, np.int32))


def _flatten(encoded: list[Any]) -> EncodedChunk:
    ids: list[int] = []
    labels: list[int] = []
    lengths: list[int] = []
    truncated = dropped = trainable = 0
    for enc in encoded:
        truncated += enc.truncated
        kept = enc.trainable
        if kept == 0:
            dropped += 1
            continue
        trainable += kept
        ids.extend(enc.input_ids)
        labels.extend(enc.labels)
        lengths.append(len(enc.input_ids))
    ids_arr = np.asarray(ids, dtype=np.int32)
    labels_arr = np.asarray(labels, dtype=np.int64)
    trained = labels_arr != IGNORE_INDEX
    if not np.array_equal(labels_arr[trained], ids_arr[trained]):
        raise AssertionError("a trained label differs from its token: the mask would lose it")
    return EncodedChunk(
        ids_arr,
        trained.astype(np.uint8),
        np.asarray(lengths, dtype=np.int32),
        truncated,
        dropped,
        trainable,
    )


# --------------------------------------------------------------------------- parallel map

_WORKER: ChunkEncoder | None = None  # set in the parent right before forking


def _encode_in_worker(rows: list[tuple[str, Row]], is_eval: list[bool]) -> ChunkResult:
    assert _WORKER is not None
    return _WORKER(rows, is_eval)


def encode_chunks(
    encoder: ChunkEncoder,
    chunks: Iterator[tuple[list[tuple[str, Row]], list[bool]]],
    processes: int,
) -> Iterator[ChunkResult]:
    """`encoder` over `chunks` in order; forked workers when processes > 1.

    Raises the first row's DatasetError, in row order, as the serial loop would.
    """
    first = next(chunks, None)
    second = next(chunks, None) if first is not None else None
    ahead = itertools.chain([c for c in (first, second) if c is not None], chunks)
    single = second is None  # one chunk: forking would cost more than it saves
    if processes <= 1 or single or "fork" not in multiprocessing.get_all_start_methods():
        for rows, is_eval in ahead:
            yield _checked(encoder(rows, is_eval))
        return
    chunks = ahead
    global _WORKER
    _WORKER = encoder
    # Processes give the parallelism; Rust threads per process would oversubscribe.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    pending: deque[Any] = deque()
    try:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            for rows, is_eval in chunks:
                pending.append(pool.apply_async(_encode_in_worker, (rows, is_eval)))
                if len(pending) >= processes * IN_FLIGHT_PER_PROCESS:
                    yield _checked(pending.popleft().get())
            while pending:
                yield _checked(pending.popleft().get())
    finally:
        _WORKER = None


def _checked(result: ChunkResult) -> ChunkResult:
    if result.error is not None:
        raise DatasetError(*result.error)
    return result
