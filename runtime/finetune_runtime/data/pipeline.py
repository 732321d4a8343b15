"""Config + tokenizer -> tokenized (and optionally packed) train/eval examples.

`stream_datasets` reads every dataset entry in bounded chunks, tokenizes them on
`processes` cores and hands the results to a sink: `MemorySink` for
`build_datasets` (in-memory lists), the prepared cache's writer for training
(finetune_runtime.data.cache). Both produce the same examples, token for token.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch.utils.data import Dataset

from finetune_runtime.config import DatasetSettings, FineTuneConfig
from finetune_runtime.data.detect import resolved
from finetune_runtime.data.encode import ChunkEncoder, EncodedChunk, encode_chunks
from finetune_runtime.data.formats import (
    FormatContext,
    Renderer,
    check_settings,
    needs_chat_template,
)
from finetune_runtime.data.packing import pack_examples
from finetune_runtime.data.readers import Row
from finetune_runtime.data.sources import Source, open_source
from finetune_runtime.data.splits import validation_count, validation_indices
from finetune_runtime.data.templates import resolve_chat_template
from finetune_runtime.data.tokenize import SegmentTokenizer
from finetune_runtime.errors import DatasetError

log = logging.getLogger(__name__)

CHUNK_ROWS = 512  # rows tokenized per batched tokenizer call


class TokenizedDataset(Dataset):
    """Examples {"input_ids", "labels"} (+ "position_ids" when packed), ready to collate."""

    def __init__(self, examples: list[dict[str, list[int]]], packed: bool = False) -> None:
        self.examples = examples
        self.packed = packed
        self.num_tokens = sum(len(e["input_ids"]) for e in examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.examples[index]

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        return iter(self.examples)

    @property
    def lengths(self) -> list[int]:
        return [len(e["input_ids"]) for e in self.examples]


@dataclass
class DatasetStats:
    """Per dataset entry of the config."""

    path: str
    format: str
    rows: int = 0
    train_rows: int = 0
    eval_rows: int = 0
    train_examples: int = 0  # kept after truncation/dropping
    eval_examples: int = 0
    train_tokens: int = 0
    eval_tokens: int = 0
    trainable_tokens: int = 0  # train tokens that carry a label
    truncated: int = 0  # examples cut at sequence_len (train + eval)
    dropped: int = 0  # examples with nothing left to train on after truncation
    chat_template: str | None = None
    format_detected: bool = False  # `format` was omitted and detected from the first row


@dataclass
class DataStats:
    """What the pipeline produced; `packing_efficiency` is non-pad tokens / row capacity."""

    sequence_len: int
    sample_packing: bool
    datasets: list[DatasetStats] = field(default_factory=list)
    train_examples: int = 0
    eval_examples: int = 0
    train_rows: int = 0  # after packing: what the data loader iterates
    eval_rows: int = 0
    train_tokens: int = 0
    eval_tokens: int = 0
    packing_efficiency: float | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataStats:
        fields = dict(data)
        fields["datasets"] = [DatasetStats(**d) for d in data.get("datasets", [])]
        return cls(**fields)


@dataclass
class DatasetBundle:
    train: Any  # TokenizedDataset, or the prepared cache's MappedDataset
    eval: Any | None
    stats: DataStats


class ExampleSink(Protocol):
    """Receives encoded examples in order; `split` is "train" or "eval"."""

    def add(self, split: str, chunk: EncodedChunk) -> None: ...


class MemorySink:
    def __init__(self) -> None:
        self.examples: dict[str, list[dict[str, list[int]]]] = {"train": [], "eval": []}

    def add(self, split: str, chunk: EncodedChunk) -> None:
        self.examples[split].extend(chunk.examples())


def build_datasets(
    config: FineTuneConfig,
    tokenizer: Any,
    *,
    base_dir: Path | None = None,
    processes: int | None = None,
) -> DatasetBundle:
    """Read, format, tokenize, split and (optionally) pack every dataset, in memory.

    Raises DatasetError naming file:line (or row) and field for the first bad row.
    """
    training = config.training
    sink = MemorySink()
    stats = stream_datasets(config, tokenizer, sink, base_dir=base_dir, processes=processes)
    train, evals = sink.examples["train"], sink.examples["eval"]
    if training.sample_packing:
        train_set = TokenizedDataset(pack_examples(train, training.sequence_len), packed=True)
        eval_set = (
            TokenizedDataset(pack_examples(evals, training.sequence_len), packed=True)
            if evals
            else None
        )
        stats.packing_efficiency = train_set.num_tokens / (len(train_set) * training.sequence_len)
    else:
        train_set = TokenizedDataset(train)
        eval_set = TokenizedDataset(evals) if evals else None
    stats.train_rows = len(train_set)
    stats.eval_rows = len(eval_set) if eval_set is not None else 0
    return DatasetBundle(train_set, eval_set, stats)


def stream_datasets(
    config: FineTuneConfig,
    tokenizer: Any,
    sink: ExampleSink,
    *,
    base_dir: Path | None = None,
    processes: int | None = None,
    sources: list[Source] | None = None,
) -> DataStats:
    """Encode every dataset entry into `sink` (train examples of entry 0, then of entry 1,
    ...; eval likewise) and return the statistics; packing is the sink's business."""
    from finetune_runtime.data.sources import default_processes

    training = config.training
    encoder = SegmentTokenizer(tokenizer, training.sequence_len)
    stats = DataStats(training.sequence_len, training.sample_packing)
    procs = processes or config.dataset_processes or default_processes()
    for i, settings in enumerate(config.datasets):
        source = sources[i] if sources is not None else open_source(settings, base_dir)
        ds_stats = _stream_one(i, settings, source, config, tokenizer, encoder, stats, sink, procs)
        stats.datasets.append(ds_stats)
        log.info(
            "dataset %s [%s%s]: %d rows -> %d train / %d eval examples, %d train tokens "
            "(%d truncated, %d dropped)",
            ds_stats.path,
            ds_stats.format,
            ", detected" if ds_stats.format_detected else "",
            ds_stats.rows,
            ds_stats.train_examples,
            ds_stats.eval_examples,
            ds_stats.train_tokens,
            ds_stats.truncated,
            ds_stats.dropped,
        )
    stats.train_examples = sum(d.train_examples for d in stats.datasets)
    stats.eval_examples = sum(d.eval_examples for d in stats.datasets)
    stats.train_tokens = sum(d.train_tokens for d in stats.datasets)
    stats.eval_tokens = sum(d.eval_tokens for d in stats.datasets)
    if not stats.train_examples:
        dropped = sum(s.dropped for s in stats.datasets)
        raise DatasetError(
            f"no usable training examples: all {dropped} were dropped because nothing trainable "
            f"was left after truncating to sequence_len={training.sequence_len}; raise "
            "training.sequence_len or shorten the prompts"
        )
    return stats


def _stream_one(
    index: int,
    settings: DatasetSettings,
    source: Source,
    config: FineTuneConfig,
    tokenizer: Any,
    encoder: SegmentTokenizer,
    stats: DataStats,
    sink: ExampleSink,
    processes: int,
) -> DatasetStats:
    where = f"datasets[{index}]"
    settings, detected = resolved(settings, source.first_row())
    check_settings(settings, where)
    renderer = None
    if needs_chat_template(settings):
        template = resolve_chat_template(
            settings.chat_template or config.chat_template, tokenizer, stats.warnings
        )
        renderer = Renderer.for_tokenizer(template.text, template.name, tokenizer)
    ctx = FormatContext(settings, config.training.train_on_inputs, renderer)
    ds_stats = DatasetStats(
        settings.path,
        str(settings.format),
        chat_template=renderer.name if renderer else None,
        format_detected=detected,
    )
    eval_rows: set[int] = set()
    if settings.splits.validation > 0:
        total = source.count()
        count = validation_count(settings.splits, total, where)
        eval_rows = validation_indices(total, count, config.seed, index)
    chunks = _with_split(source.chunks(CHUNK_ROWS), eval_rows)
    for result in encode_chunks(ChunkEncoder(ctx, encoder), chunks, processes):
        ds_stats.rows += result.rows
        for split, part in (("train", result.train), ("eval", result.eval)):
            ds_stats.truncated += part.truncated
            ds_stats.dropped += part.dropped
            if not len(part.lengths):
                continue
            sink.add(split, part)
            if split == "train":
                ds_stats.train_examples += len(part.lengths)
                ds_stats.train_tokens += len(part.ids)
                ds_stats.trainable_tokens += part.trainable_tokens
            else:
                ds_stats.eval_examples += len(part.lengths)
                ds_stats.eval_tokens += len(part.ids)
    ds_stats.eval_rows = len(eval_rows)
    ds_stats.train_rows = ds_stats.rows - ds_stats.eval_rows
    return ds_stats


def _with_split(
    chunks: Iterator[list[tuple[str, Row]]], eval_rows: set[int]
) -> Iterator[tuple[list[tuple[str, Row]], list[bool]]]:
    """Each chunk with a flag per row: does it go to the validation split?"""
    position = 0
    for chunk in chunks:
        yield chunk, [position + k in eval_rows for k in range(len(chunk))]
        position += len(chunk)
