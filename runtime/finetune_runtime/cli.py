"""`finetune`: validate, init, preprocess, train, merge, generate, fetch, launch, run, serve.

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
from rich.markup import escape

from finetune_runtime import __version__
from finetune_runtime.errors import EXIT_INTERRUPTED, FinetuneError
from finetune_runtime.launch.exit_file import record_exit_code

COMMANDS = (
    "validate",
    "init",
    "preprocess",
    "train",
    "merge",
    "generate",
    "fetch",
    "launch",
    "run",
    "serve",
)

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader left

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
    from finetune_runtime.storage.redact import RedactingFilter

    for handler in logging.getLogger().handlers:  # credentials never reach a log line
        handler.addFilter(RedactingFilter())
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at exit
        return code
    except FinetuneError as exc:
        # Escaped: messages quote user text and commands like pip install 'pkg[extra]'.
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False)
        record_exit_code(exc.exit_code, str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`finetune validate --json | head`): not an error of ours.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
