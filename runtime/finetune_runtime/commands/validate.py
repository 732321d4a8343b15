"""`finetune validate CONFIG`: check a config (and optionally its data) before training.

Besides the schema, it checks what the config points at (finetune_runtime.commands.preflight):
a missing local dataset, DeepSpeed JSON or model directory, or an unusable output_dir
is an error (exit 2) at its field and line.

Exit codes: 0 valid, 2 invalid config, 3 bad dataset (with --check-data), 4 the
tokenizer needed for --check-data cannot be loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from finetune_runtime.config import (
    FineTuneConfig,
    QuantizationSettings,
    parse_config_with_warnings,
)
from finetune_runtime.errors import ConfigError, DatasetError, FinetuneError, ModelError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check a training config (and optionally its datasets)",
        description="Validate a training config (canonical or axolotl-style). Prints every "
        "problem with file:line and field; exits 2 when the config is invalid.",
    )
    parser.add_argument("config", type=Path, help="the YAML (or JSON) config file")
    parser.add_argument("--json", action="store_true", help="print a machine-readable result")
    parser.add_argument(
        "--check-data",
        action="store_true",
        help="also read and tokenize every dataset (needs the tokenizer locally: a builtin "
        "model or a local model directory) to find bad rows",
    )
    parser.add_argument(
        "--world-size",
        type=int,
        default=None,
        help="number of training processes (GPUs) for the effective batch; default "
        "$WORLD_SIZE or 1",
    )
    parser.set_defaults(func=run)


@dataclass
class Plan:
    """Numbers derived from a valid config, for the summary."""

    world_size: int
    effective_batch: int
    train_rows: int | None = None  # what the loader iterates per epoch, when known
    steps_per_epoch: int | None = None
    total_steps: int | None = None
    rows_source: str = ""  # "rows in the files" or "after tokenizing/packing"


def run(args: argparse.Namespace) -> int:
    console = Console(highlight=False, soft_wrap=True)
    source = str(args.config)
    world_size = args.world_size or int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size < 1:
        raise FinetuneError("--world-size must be at least 1")
    result: dict[str, Any] = {"config": source, "valid": False, "warnings": [], "issues": []}
    from finetune_runtime.commands.preflight import reference_rules

    base_dir = args.config.resolve().parent
    try:
        config, warnings = parse_config_with_warnings(
            _read(args.config), source=source, extra_rules=lambda c: reference_rules(c, base_dir)
        )
    except ConfigError as exc:
        result["issues"] = [issue.as_dict() for issue in exc.issues]
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            _print_issues(console, exc, source)
        return exc.exit_code
    result.update(valid=True, warnings=warnings)
    notes = _dataset_notes(config, base_dir)
    plan = Plan(
        world_size,
        config.training.batch_size * config.training.gradient_accumulation_steps * world_size,
    )
    _estimate_from_files(config, notes, plan)
    code = 0
    stats = None
    if args.check_data:
        try:
            stats = _check_data(config, base_dir)
        except FinetuneError as exc:  # DatasetError, ModelError, FetchError (S3 datasets)
            code = exc.exit_code
            result["valid"] = False
            result["data_error"] = {
                "message": str(exc),
                "path": getattr(exc, "path", None),
                "line": getattr(exc, "line", None),
            }
        else:
            warnings.extend(stats.warnings)
            _estimate(config, plan, stats.train_rows, "after tokenizing and packing")
            result["data"] = stats.as_dict()
    result["summary"] = _summary(config, plan, notes)
    if args.json:
        print(json.dumps(result, indent=2))
        return code
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(_summary_table(config, plan, notes))
    if stats is not None:
        console.print(_data_table(stats))
    if code:
        console.print(f"[bold red]dataset error:[/] {result['data_error']['message']}")
    else:
        console.print(f"[bold green]✓[/] {source} is valid")
    return code


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config is not UTF-8 text (byte {exc.start})", str(path)) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc


def _print_issues(console: Console, exc: ConfigError, source: str) -> None:
    count = len(exc.issues)
    console.print(f"[bold red]✗[/] {source}: {count} problem{'s' if count != 1 else ''}")
    for issue in exc.issues:
        console.print(f"  [red]•[/] {issue.render(exc.source or source)}", markup=True)


# --------------------------------------------------------------------------- summary


@dataclass
class DatasetNote:
    """Where a dataset is read from (or why it cannot be yet), its rows and format."""

    resolved: str
    format: str | None
    detected: bool = False
    rows: int | None = None


def _dataset_notes(config: FineTuneConfig, base_dir: Path) -> list[DatasetNote]:
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


def _estimate_from_files(config: FineTuneConfig, notes: list[DatasetNote], plan: Plan) -> None:
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
    _estimate(config, plan, total, "rows in the files, before packing")


def _estimate(config: FineTuneConfig, plan: Plan, rows: int, how: str) -> None:
    """Steps as the trainer will plan them (finetune_runtime.train.plan: pure arithmetic)."""
    from finetune_runtime.train.plan import make_plan

    if rows < 1:
        return
    trainer_plan = make_plan(config.training, dataset_rows=rows, world_size=plan.world_size)
    plan.train_rows, plan.rows_source = rows, how
    plan.steps_per_epoch = trainer_plan.steps_per_epoch
    plan.total_steps = trainer_plan.total_steps


def _summary(config: FineTuneConfig, plan: Plan, notes: list[DatasetNote]) -> dict[str, Any]:
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


def _summary_table(config: FineTuneConfig, plan: Plan, notes: list[DatasetNote]) -> Table:
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


# --------------------------------------------------------------------------- --check-data


def _check_data(config: FineTuneConfig, base_dir: Path) -> Any:
    from finetune_runtime.data import build_datasets

    # Libraries imported on the way (deepspeed via accelerate) print to stdout; keep
    # stdout for our own output so `--json` stays parseable.
    with contextlib.redirect_stdout(sys.stderr):
        tokenizer = load_tokenizer_for_check(config, base_dir)
        return build_datasets(config, tokenizer, base_dir=base_dir).stats


def load_tokenizer_for_check(config: FineTuneConfig, base_dir: Path) -> Any:
    """The tokenizer training would use, when it is available without downloading anything.

    Loaded by the trainer's own loader (finetune_runtime.model.load.load_tokenizer: pad token,
    special_tokens), so --check-data sees exactly the tokens training will see.
    """
    from finetune_runtime.model.tiny import is_builtin

    name = config.tokenizer or config.base_model
    local = Path(name).expanduser()
    if not local.is_absolute():
        local = base_dir / local
    if not is_builtin(name) and not local.is_dir() and not Path(name).expanduser().is_dir():
        raise ModelError(
            f"--check-data needs the tokenizer of {name!r}, which is not available here "
            "(only builtin:NAME models and local model directories are). Run it where the "
            "model is, e.g. after `finetune fetch`, or set `tokenizer:` to a local directory."
        )
    from finetune_runtime.model import load as model

    source = config.base_model
    if config.tokenizer is None:
        source = model.resolve_model_source(config.base_model, base_dir)
    return model.load_tokenizer(config, source, base_dir)


def _data_table(stats: Any) -> Table:
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
