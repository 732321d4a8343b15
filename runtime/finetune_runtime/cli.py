"""`finetune`: validate, init, preprocess, train, merge, fetch, launch, run.

Each subcommand lives in `finetune_runtime.commands.<name>` and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int`.
Command modules import heavy libraries (torch, transformers) inside `func`, so
`finetune validate` and `finetune --help` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from rich.console import Console

from finetune_runtime import __version__
from finetune_runtime.errors import FinetuneError

COMMANDS = ("validate", "init", "preprocess", "train", "merge", "fetch", "launch", "run")

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetune",
        description="Fine-tune LLMs from an axolotl-style YAML config, locally or in a pod.",
    )
    parser.add_argument("--version", action="version", version=f"finetune {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"finetune_runtime.commands.{name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # Hugging Face's per-file tqdm bars ("Loading weights", "Writing model shards") drown
    # the trainer's own progress and log lines; keep them unless the user asked for them.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from finetune_runtime.s3 import RedactingFilter

    for handler in logging.getLogger().handlers:  # credentials never reach a log line
        handler.addFilter(RedactingFilter())
    try:
        return int(args.func(args) or 0)
    except FinetuneError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
