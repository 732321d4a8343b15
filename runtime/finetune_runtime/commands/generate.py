"""`finetune generate CONFIG_OR_MODEL`: ask a trained model something, without a server.

With --prompt it answers once; without, it reads one prompt per line from stdin
(interactively, with a `>` prompt, when stdin is a terminal) until end of input.
Prompts get the training data's template (alpaca, chat, custom), so the model
sees what it was trained on; --raw sends the text as it is.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate from trained weights (one --prompt, or prompts read from stdin)",
        description="CONFIG_OR_MODEL is a training config or its output_dir (the finished "
        "adapter/model, else the newest complete checkpoint), a checkpoint-<step> directory, "
        "an adapter directory or a model directory (e.g. output_dir/merged). Prompts are "
        "wrapped in the first dataset's prompt template when the training config is known.",
    )
    parser.add_argument("target", metavar="CONFIG_OR_MODEL")
    parser.add_argument("--prompt", help="answer this prompt and exit (default: read stdin)")
    parser.add_argument("--input", default="", help="alpaca/custom data: the input field")
    parser.add_argument(
        "--checkpoint",
        help="with a config or output_dir: a checkpoint step, 'latest', or a directory",
    )
    parser.add_argument("--raw", action="store_true", help="send prompts without the template")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="0 (default) decodes greedily"
    )
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from finetune_runtime.errors import ConfigError
    from finetune_runtime.model.generate import describe, find_weights, load_for_generation

    if args.max_new_tokens < 1:
        raise ConfigError("--max-new-tokens must be at least 1")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise ConfigError("--temperature must be >= 0 and --top-p in (0, 1]")
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    weights = find_weights(args.target, args.checkpoint)
    err.print(f"loading {describe(weights)}")
    model, tokenizer = load_for_generation(weights)
    config = None if args.raw else weights.config

    def answer(text: str) -> str:
        return _answer(model, tokenizer, config, text, args)

    if args.prompt is not None:
        print(answer(args.prompt))
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        err.print("one prompt per line; Ctrl-D to quit")
    while True:
        try:
            line = input("> ") if interactive else sys.stdin.readline()
        except EOFError:
            break
        if not interactive and not line:
            break
        text = line.rstrip("\n")
        if text.strip():
            print(answer(text), flush=True)
    return 0


def _answer(model: Any, tokenizer: Any, config: Any, text: str, args: argparse.Namespace) -> str:
    from finetune_runtime.model.generate import generate, prompt_ids

    prompt: str | list[int] = (
        text if config is None else prompt_ids(config, tokenizer, text, args.input)
    )
    return generate(
        model,
        tokenizer,
        prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
    ).strip()
