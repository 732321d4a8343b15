"""`finetune merge CONFIG`: fold the trained adapter into the base model."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="merge a trained adapter into its base model (safetensors + tokenizer)",
        description="Load base_model unquantized, apply the adapter, merge_and_unload, save.",
    )
    parser.add_argument("config", help="the training config the adapter was trained with")
    parser.add_argument(
        "--adapter",
        help="adapter directory, or checkpoint-<step> (looked up in OUTPUT_DIR when not in the "
        "working directory); default: OUTPUT_DIR/adapter",
    )
    parser.add_argument(
        "--output", help="where to write the merged model (default: OUTPUT_DIR/merged)"
    )
    parser.add_argument(
        "--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="merged weights dtype"
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from finetune_runtime.config import load_config
    from finetune_runtime.model.merge import merge
    from finetune_runtime.storage.outdir import resolve_output_dir

    config = load_config(args.config)
    base_dir = Path(args.config).resolve().parent
    config = config.model_copy(
        update={"output_dir": resolve_output_dir(config.output_dir, base_dir)}
    )
    out = merge(
        config,
        adapter=args.adapter,
        output=args.output,
        base_dir=base_dir,
        precision=args.dtype,
    )
    Console(highlight=False).print(f"merged model written to [bold]{out}[/]")
    return 0
