"""build_datasets: config + tokenizer -> tokenized (and optionally packed) train/eval sets."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from finetune_runtime.config import DatasetSettings, FineTuneConfig
from finetune_runtime.data.formats import (
    FormatContext,
    Renderer,
    RowError,
    Segment,
    check_settings,
    needs_chat_template,
    row_segments,
)
from finetune_runtime.data.packing import pack_examples
from finetune_runtime.data.readers import Row, load_rows
from finetune_runtime.data.splits import split_indices, validation_count
from finetune_runtime.data.templates import resolve_chat_template
from finetune_runtime.data.tokenize import Encoded, SegmentTokenizer
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


@dataclass
class DatasetBundle:
    train: TokenizedDataset
    eval: TokenizedDataset | None
    stats: DataStats


def build_datasets(
    config: FineTuneConfig, tokenizer: Any, *, base_dir: Path | None = None
) -> DatasetBundle:
    """Read, format, tokenize, split and (optionally) pack every dataset in `config`.

    Raises DatasetError naming file:line and field for the first bad row.
    """
    training = config.training
    encoder = SegmentTokenizer(tokenizer, training.sequence_len)
    stats = DataStats(training.sequence_len, training.sample_packing)
    train: list[dict[str, list[int]]] = []
    evals: list[dict[str, list[int]]] = []
    for i, settings in enumerate(config.datasets):
        ds_train, ds_eval, ds_stats = _build_one(
            i, settings, config, tokenizer, encoder, base_dir, stats
        )
        train.extend(ds_train)
        evals.extend(ds_eval)
        stats.datasets.append(ds_stats)
        log.info(
            "dataset %s: %d rows -> %d train / %d eval examples, %d train tokens "
            "(%d truncated, %d dropped)",
            ds_stats.path,
            ds_stats.rows,
            ds_stats.train_examples,
            ds_stats.eval_examples,
            ds_stats.train_tokens,
            ds_stats.truncated,
            ds_stats.dropped,
        )
    if not train:
        dropped = sum(s.dropped for s in stats.datasets)
        raise DatasetError(
            f"no usable training examples: all {dropped} were dropped because nothing trainable "
            f"was left after truncating to sequence_len={training.sequence_len}; raise "
            "training.sequence_len or shorten the prompts"
        )
    stats.train_examples, stats.eval_examples = len(train), len(evals)
    stats.train_tokens = sum(len(e["input_ids"]) for e in train)
    stats.eval_tokens = sum(len(e["input_ids"]) for e in evals)
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


def _build_one(
    index: int,
    settings: DatasetSettings,
    config: FineTuneConfig,
    tokenizer: Any,
    encoder: SegmentTokenizer,
    base_dir: Path | None,
    stats: DataStats,
) -> tuple[list[dict[str, list[int]]], list[dict[str, list[int]]], DatasetStats]:
    where = f"datasets[{index}]"
    check_settings(settings, where)
    renderer = None
    if needs_chat_template(settings):
        template = resolve_chat_template(
            settings.chat_template or config.chat_template, tokenizer, stats.warnings
        )
        renderer = Renderer.for_tokenizer(template.text, template.name, tokenizer)
    ctx = FormatContext(settings, config.training.train_on_inputs, renderer)
    rows = load_rows(settings.path, base_dir)
    ds_stats = DatasetStats(
        settings.path,
        settings.format,
        rows=len(rows),
        chat_template=renderer.name if renderer else None,
    )
    count = validation_count(settings.splits, len(rows), where)
    train_idx, eval_idx = split_indices(len(rows), count, config.seed, index)
    ds_stats.train_rows, ds_stats.eval_rows = len(train_idx), len(eval_idx)
    train = _encode_rows([rows[i] for i in train_idx], ctx, encoder, ds_stats)
    evals = _encode_rows([rows[i] for i in eval_idx], ctx, encoder, ds_stats)
    ds_stats.train_examples, ds_stats.eval_examples = len(train), len(evals)
    ds_stats.train_tokens = sum(len(e["input_ids"]) for e in train)
    ds_stats.eval_tokens = sum(len(e["input_ids"]) for e in evals)
    ds_stats.trainable_tokens = sum(
        sum(1 for label in e["labels"][1:] if label != -100) for e in train
    )
    return train, evals, ds_stats


def _encode_rows(
    rows: Sequence[tuple[str, Row]],
    ctx: FormatContext,
    encoder: SegmentTokenizer,
    ds_stats: DatasetStats,
) -> list[dict[str, list[int]]]:
    kept: list[dict[str, list[int]]] = []
    for start in range(0, len(rows), CHUNK_ROWS):
        chunk = rows[start : start + CHUNK_ROWS]
        segments = [_segments(shown, row, ctx) for shown, row in chunk]
        for encoded in encoder.encode_many(segments):
            ds_stats.truncated += encoded.truncated
            if encoded.trainable == 0:
                ds_stats.dropped += 1
                continue
            kept.append(_as_example(encoded))
    return kept


def _segments(shown: str, row: Row, ctx: FormatContext) -> list[Segment]:
    try:
        return row_segments(row.data, ctx)
    except RowError as exc:
        where = "" if row.label.startswith("line") else f"{row.label}: "
        what = f"field {exc.field!r}: " if exc.field else ""
        raise DatasetError(
            f"{where}{what}{exc.message} (format {ctx.settings.format})", shown, row.line
        ) from exc


def _as_example(encoded: Encoded) -> dict[str, list[int]]:
    return {"input_ids": encoded.input_ids, "labels": encoded.labels}
