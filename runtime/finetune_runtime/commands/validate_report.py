"""What `finetune validate` prints about a valid config: its datasets, batch and steps.

Pure summaries of a parsed config (and, with --check-data, of the pipeline's statistics)
as a JSON-able dict and as rich tables; reading the dataset files for their row counts
and detected formats is the only I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from finetune_runtime.config import FineTuneConfig, QuantizationSettings
from finetune_runtime.errors import DatasetError


@dataclass
class Plan:
    """Numbers derived from a valid config, for the summary."""

    world_size: int
    effective_batch: int
    train_rows: int | None = None  # what the loader iterates per epoch, when known
    steps_per_epoch: int | None = None
    total_steps: int | None = None
    rows_source: str = ""  # "rows in the files" or "after tokenizing/packing"


@dataclass
class DatasetNote:
    """Where a dataset is read from (or why it cannot be yet), its rows and format."""

    resolved: str
    format: str | None
    detected: bool = False
    rows: int | None = None


def dataset_notes(config: FineTuneConfig, base_dir: Path) -> list[DatasetNote]:
    """Per dataset: open it (no tokenizer), count its rows, detect its format."""
    from finetune_runtime.data.detect import resolved
    from finetune_runtime.data.sources import open_source

    notes = []
    for ds in config.datasets:
        if ds.path.startswith("s3://"):
            notes.append(DatasetNote("fetched from S3 at training time", ds.format))
            continue
        try:
            source = open_source(ds, base_dir)
            settings, detected = resolved(ds, source.first_row())
            where = source.spec.location
            if source.spec.kind == "hub":
                where = f"hub dataset {where} (from the local datasets cache or the hub)"
            notes.append(DatasetNote(where, settings.format, detected, source.count()))
        except DatasetError as exc:
            text = str(exc)
            prefix = f"{exc.path}: "
            notes.append(
                DatasetNote(text[len(prefix) :] if text.startswith(prefix) else text, ds.format)
            )
    return notes


def estimate_from_files(config: FineTuneConfig, notes: list[DatasetNote], plan: Plan) -> None:
    """Training rows of the datasets (no tokenizer): an estimate before packing."""
    from finetune_runtime.data.splits import validation_count

    total = 0
    for i, (ds, note) in enumerate(zip(config.datasets, notes, strict=True)):
        if note.rows is None:
            return
        try:
            total += note.rows - validation_count(ds.splits, note.rows, f"datasets[{i}]")
        except DatasetError:
            return
    estimate(config, plan, total, "rows in the files, before packing")


def estimate(config: FineTuneConfig, plan: Plan, rows: int, how: str) -> None:
    """Steps as the trainer will plan them (finetune_runtime.train.plan: pure arithmetic)."""
    from finetune_runtime.train.plan import make_plan

    if rows < 1:
        return
    trainer_plan = make_plan(config.training, dataset_rows=rows, world_size=plan.world_size)
    plan.train_rows, plan.rows_source = rows, how
    plan.steps_per_epoch = trainer_plan.steps_per_epoch
    plan.total_steps = trainer_plan.total_steps


def summary(config: FineTuneConfig, plan: Plan, notes: list[DatasetNote]) -> dict[str, Any]:
    t = config.training
    return {
        "base_model": config.base_model,
        "adapter": config.adapter,
        "quantization": config.quantization.model_dump() if config.quantization else None,
        "deepspeed": config.deepspeed,
        "datasets": [
            {
                "path": ds.path,
                "format": note.format,
                "format_detected": note.detected,
                "rows": note.rows,
                "resolved": note.resolved,
            }
            for ds, note in zip(config.datasets, notes, strict=True)
        ],
        "world_size": plan.world_size,
        "batch_size": t.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "effective_batch_size": plan.effective_batch,
        "sequence_len": t.sequence_len,
        "sample_packing": t.sample_packing,
        "epochs": t.epochs,
        "max_steps": t.max_steps,
        "train_rows": plan.train_rows,
        "steps_per_epoch": plan.steps_per_epoch,
        "total_steps": plan.total_steps,
        "steps_estimated_from": plan.rows_source or None,
        "output_dir": config.output_dir,
    }


def _quantization_label(quant: QuantizationSettings) -> str:
    """What the model loader does: `type`/`double_quant` only apply to 4-bit (model.bnb_config)."""
    if quant.bits == 8:
        return "8-bit"
    double = ", double quant" if quant.double_quant else ""
    return f"4-bit {quant.type}{double}"


def summary_table(config: FineTuneConfig, plan: Plan, notes: list[DatasetNote]) -> Table:
    t = config.training
    table = Table(title="finetune config", show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("model", config.base_model)
    adapter: str = config.adapter
    if config.quantization is not None:
        adapter += f" ({_quantization_label(config.quantization)})"
    if config.uses_lora_family:
        adapter += f", r={config.lora.r} alpha={config.lora.alpha:g}"
    table.add_row("adapter", adapter)
    for i, (ds, note) in enumerate(zip(config.datasets, notes, strict=True)):
        fmt = f"{note.format or 'auto'}{', detected' if note.detected else ''}"
        table.add_row(f"dataset {i}", escape(f"{ds.path} [{fmt}]\n  → {note.resolved}"))
    table.add_row(
        "effective batch",
        f"{plan.effective_batch} = {t.batch_size} (batch) × {t.gradient_accumulation_steps} "
        f"(accumulation) × {plan.world_size} (processes)",
    )
    table.add_row("sequence", f"{t.sequence_len} tokens{', packed' if t.sample_packing else ''}")
    if plan.total_steps is not None:
        how = (
            f"max_steps; {plan.steps_per_epoch}/epoch"
            if t.max_steps
            else (f"{plan.steps_per_epoch}/epoch × {t.epochs:g} epochs")
        )
        table.add_row(
            "optimizer steps",
            f"≈{plan.total_steps} ({how}; {plan.train_rows} {plan.rows_source})",
        )
    else:
        table.add_row("optimizer steps", "unknown until the dataset is available")
    if config.deepspeed:
        table.add_row("deepspeed", str(config.deepspeed))
    table.add_row("output", config.output_dir)
    return table


def data_table(stats: Any) -> Table:
    table = Table(title="datasets (tokenized)", title_justify="left")
    for column in ("dataset", "rows", "train", "eval", "train tokens", "truncated", "dropped"):
        if column == "dataset":
            table.add_column(column, overflow="fold")
        else:
            table.add_column(column, justify="right")
    for ds in stats.datasets:
        table.add_row(
            escape(f"{ds.path} [{ds.format}{', detected' if ds.format_detected else ''}]"),
            str(ds.rows),
            str(ds.train_examples),
            str(ds.eval_examples),
            str(ds.train_tokens),
            str(ds.truncated),
            str(ds.dropped),
        )
    if stats.packing_efficiency is not None:
        table.caption = (
            f"packed into {stats.train_rows} rows of {stats.sequence_len} tokens: "
            f"{stats.packing_efficiency:.1%} of positions hold real tokens"
        )
    return table
