"""`finetune validate CONFIG`: check a config (and optionally its data) before training.

Besides the schema, it checks what the config points at (finetune_runtime.commands.preflight):
a missing local dataset, DeepSpeed JSON or model directory, or an unusable output_dir
is an error (exit 2) at its field and line; so is a dataset `format` that no installed
package registers (finetune_runtime.data.registry) or whose own settings check fails.
The summary it prints is built in finetune_runtime.commands.validate_report.

Exit codes: 0 valid, 2 invalid config, 3 bad dataset (with --check-data), 4 the
tokenizer needed for --check-data cannot be loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from finetune_runtime.commands import validate_report as report
from finetune_runtime.config import FineTuneConfig, Rule, parse_config_with_warnings
from finetune_runtime.errors import ConfigError, FinetuneError, ModelError


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


def run(args: argparse.Namespace) -> int:
    console = Console(highlight=False, soft_wrap=True)
    source = str(args.config)
    world_size = args.world_size or int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size < 1:
        raise FinetuneError("--world-size must be at least 1")
    result: dict[str, Any] = {"config": source, "valid": False, "warnings": [], "issues": []}
    base_dir = args.config.resolve().parent
    try:
        config, warnings = parse_config_with_warnings(
            _read(args.config), source=source, extra_rules=lambda c: _rules(c, base_dir)
        )
    except ConfigError as exc:
        result["issues"] = [issue.as_dict() for issue in exc.issues]
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            _print_issues(console, exc, source)
        return exc.exit_code
    result.update(valid=True, warnings=warnings)
    notes = report.dataset_notes(config, base_dir)
    plan = report.Plan(
        world_size,
        config.training.batch_size * config.training.gradient_accumulation_steps * world_size,
    )
    report.estimate_from_files(config, notes, plan)
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
            report.estimate(config, plan, stats.train_rows, "after tokenizing and packing")
            result["data"] = stats.as_dict()
    result["summary"] = report.summary(config, plan, notes)
    if args.json:
        print(json.dumps(result, indent=2))
        return code
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(report.summary_table(config, plan, notes))
    if stats is not None:
        console.print(report.data_table(stats))
    if code:
        console.print(f"[bold red]dataset error:[/] {result['data_error']['message']}")
    else:
        console.print(f"[bold green]✓[/] {source} is valid")
    return code


def _rules(config: FineTuneConfig, base_dir: Path) -> list[Rule]:
    """Checks beyond the schema: what the config points at, and its dataset formats (an
    unknown or unloadable name, a format's own settings checks) as installed here."""
    from finetune_runtime.commands.preflight import reference_rules
    from finetune_runtime.data.formats import config_rules

    return reference_rules(config, base_dir) + config_rules(config)


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
