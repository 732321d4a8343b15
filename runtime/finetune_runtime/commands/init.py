"""`finetune init`: write a commented starter config from a packaged preset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from finetune_runtime.config import parse_config
from finetune_runtime.config.presets import preset_names, render_preset
from finetune_runtime.errors import FinetuneError


def register(subparsers: argparse._SubParsersAction) -> None:
    names = preset_names()
    parser = subparsers.add_parser(
        "init",
        help="write a starter config from a preset",
        description="Write a commented, canonical training config from a preset. "
        f"Presets: {', '.join(names)}.",
    )
    parser.add_argument(
        "--preset",
        choices=names,
        default="tiny",
        help="starting point (default: tiny, which runs on a CPU with nothing to download)",
    )
    parser.add_argument(
        "-o",
        "--output",
        default="finetune.yaml",
        help="file to write (default: finetune.yaml; '-' prints to stdout)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    text = render_preset(args.preset)
    parse_config(text, source=f"preset {args.preset}")  # a preset that fails is a bug: fail loudly
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.output)
    if out.is_dir():
        raise FinetuneError(f"{out} is a directory: give a file name, e.g. {out / 'finetune.yaml'}")
    if out.exists() and not args.force:
        raise FinetuneError(f"{out} already exists: pass --force to overwrite it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise FinetuneError(f"cannot write {out}: {exc.strerror}") from exc
    console = Console(highlight=False, soft_wrap=True)
    console.print(f"[bold green]✓[/] wrote {out} (preset {args.preset})")
    console.print(f"  next: finetune validate {out} --check-data")
    console.print(f"        finetune train {out}")
    return 0
