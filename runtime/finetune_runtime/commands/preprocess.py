"""`finetune preprocess CONFIG`: tokenize, mask, split and pack once, into the cache.

`finetune train` with the same config then maps the cache instead of tokenizing
again (its log says "reusing the prepared dataset cache"). Exit codes: 0 done,
2 invalid config, 3 bad dataset, 4 tokenizer unavailable, 6 S3 fetch failed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "preprocess",
        help="tokenize and pack the datasets once into the prepared cache",
        description="Read every dataset, tokenize, mask, split and pack it, and write the "
        "result (memory-mapped int32 tokens) to dataset_prepared_path (default "
        "OUTPUT_DIR/prepared_data)/<key>, where <key> hashes everything that affects it. "
        "An up-to-date cache is reused; a stale one is rebuilt.",
    )
    parser.add_argument("config", help="training config (YAML or JSON)")
    parser.add_argument("--output-dir", help="override output_dir from the config")
    parser.add_argument(
        "--processes",
        type=int,
        help="tokenizing processes (default: dataset_processes, else every CPU core)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache is fresh")
    parser.add_argument("--json", action="store_true", help="print a machine-readable result")
    parser.set_defaults(func=main, max_steps=None)


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from finetune_runtime.commands.train import load_with_overrides
    from finetune_runtime.data.cache import read_meta
    from finetune_runtime.data.prepared import prepare
    from finetune_runtime.errors import ConfigError
    from finetune_runtime.model import load as model

    if args.processes is not None and args.processes < 1:
        raise ConfigError("--processes must be at least 1")
    config = load_with_overrides(args)
    base_dir = Path(args.config).resolve().parent
    source = model.resolve_model_source(config.base_model, base_dir)
    tokenizer = model.load_tokenizer(config, source, base_dir)
    done = prepare(config, tokenizer, base_dir=base_dir, processes=args.processes, force=args.force)
    stats = read_meta(done.folder)["stats"]
    result = {
        "cache": str(done.folder),
        "key": done.key,
        "reused": done.reused,
        "seconds": round(done.seconds, 3),
        "train_rows": stats["train_rows"],
        "eval_rows": stats["eval_rows"],
        "train_tokens": stats["train_tokens"],
        "eval_tokens": stats["eval_tokens"],
        "datasets": [
            {"path": d["path"], "format": d["format"], "detected": d["format_detected"]}
            for d in stats["datasets"]
        ],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    console = Console(highlight=False, soft_wrap=True)
    verb = "reused" if done.reused else f"prepared in {done.seconds:.1f}s"
    console.print(
        f"[bold green]✓[/] {verb}: {done.folder}\n"
        f"  {stats['train_rows']} train rows ({stats['train_tokens']} tokens), "
        f"{stats['eval_rows']} eval rows ({stats['eval_tokens']} tokens)"
    )
    return 0
