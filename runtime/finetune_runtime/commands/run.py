"""`finetune run [CONFIG]`: the one-command local path.

validate → train → merge → generate greedily from a few training prompts (each
marked whether it reproduces its reference answer) and from a held-out prompt.
Without CONFIG it runs the packaged `tiny` preset (a tiny Llama built locally,
LoRA on part of the Alpaca sample) into ./outputs/demo: what `make demo` does.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from finetune_runtime.commands.train import (
    add_run_arguments,
    load_with_overrides,
    train_options,
)

DEFAULT_PRESET = "tiny"
DEFAULT_OUTPUT = "./outputs/demo"
LOSS_WINDOW = 3  # steps averaged at each end when judging whether the loss fell


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="validate, train, merge and sample in one go (default: the tiny demo)",
        description="Without CONFIG, fine-tunes the builtin tiny Llama on the packaged Alpaca "
        f"sample into {DEFAULT_OUTPUT}. Fails (exit 1) if the training loss did not fall.",
    )
    parser.add_argument(
        "config", nargs="?", help=f"training config (default: preset {DEFAULT_PRESET!r})"
    )
    add_run_arguments(parser)
    parser.add_argument("--prompt", help="generate from this text instead of a dataset prompt")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument(
        "--progress-port",
        type=int,
        help="also serve /progress and /metrics on this port while training (0: any free port)",
    )
    parser.set_defaults(func=main)


def demo_config(output_dir: str | None) -> Any:
    from finetune_runtime.config import parse_config
    from finetune_runtime.config.presets import render_preset

    config = parse_config(render_preset(DEFAULT_PRESET), source=f"preset:{DEFAULT_PRESET}")
    return config.model_copy(update={"output_dir": output_dir or DEFAULT_OUTPUT})


def loss_verdict(losses: list[float], window: int = LOSS_WINDOW) -> tuple[bool, float, float]:
    """(fell?, start, end): the mean of the first and of the last `window` step losses."""
    if len(losses) < 2:
        raise ValueError("need at least two steps to judge the loss")
    k = max(1, min(window, len(losses) // 2))
    start, end = sum(losses[:k]) / k, sum(losses[-k:]) / k
    return end < start, start, end


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from finetune_runtime.train.loop import train

    console = Console(highlight=False)
    config, base_dir, options = _config_and_options(args)
    console.rule(f"[bold]finetune run[/]: {args.config or 'preset ' + DEFAULT_PRESET}")
    console.print(
        f"model [bold]{config.base_model}[/], adapter [bold]{config.adapter}[/], "
        f"{len(config.datasets)} dataset(s), output {config.output_dir}"
    )
    result = train(config, options)
    if result.stopped:
        console.print("[yellow]stopped before the end; checkpoint saved; rerun to resume[/]")
        from finetune_runtime.train.signals import EXIT_PREEMPTED

        return EXIT_PREEMPTED
    fell = _report_training(console, result)
    model, tokenizer, how = _load_trained(console, config, result.weights_dir, base_dir)
    if args.prompt:
        from finetune_runtime.model.generate import prompt_ids

        ids = prompt_ids(config, tokenizer, args.prompt)
        _show_generation(console, model, tokenizer, ids, None, "your prompt", how, args)
    else:
        _show_samples(console, model, tokenizer, result, how, args)
    return 0 if fell else 1


def _config_and_options(args: argparse.Namespace) -> tuple[Any, Path | None, Any]:
    """(config, the directory its relative paths start from, train options): the given
    config file, or the demo preset (which always trains from scratch)."""
    base_dir: Path | None = None
    if args.config:
        config = load_with_overrides(args)
        base_dir = Path(args.config).resolve().parent
        options = train_options(args, base_dir)
    else:
        from finetune_runtime.config import check_safe_path

        config = demo_config(check_safe_path(args.output_dir) if args.output_dir else None)
        options = train_options(args, None)
        if args.resume is None:
            options.resume = False  # the demo always trains from scratch
    options.serve_progress = args.progress_port is not None
    options.progress_port = args.progress_port
    return config, base_dir, options


def _report_training(console: Any, result: Any) -> bool:
    """Print the loss verdict, eval loss and weights; True when the loss fell."""
    losses = [h["loss"] for h in result.summary["losses"]]
    fell, start, end = loss_verdict(losses)
    mark = "[green]✓ loss fell[/]" if fell else "[red]✗ loss did not fall[/]"
    console.print(
        f"{mark}: first {losses[0]:.4f} → last {losses[-1]:.4f} "
        f"(mean of first/last {min(LOSS_WINDOW, len(losses) // 2)} steps: {start:.4f} → {end:.4f}) "
        f"over {result.step} steps"
    )
    if result.summary.get("final_eval_loss") is not None:
        console.print(f"eval loss {result.summary['final_eval_loss']:.4f}")
    console.print(f"adapter: {result.weights_dir}")
    return fell


def _show_samples(
    console: Any, model: Any, tokenizer: Any, result: Any, how: str, args: argparse.Namespace
) -> None:
    """Generations for the training prompts (each judged against its answer) and for
    the held-out prompt."""
    reproduced = 0
    for i, sample in enumerate(result.train_samples, 1):
        title = f"training prompt {i}/{len(result.train_samples)}"
        reproduced += _show_generation(console, model, tokenizer, sample, sample, title, how, args)
    if result.train_samples:
        console.print(
            f"{reproduced}/{len(result.train_samples)} training answers reproduced word for word "
            "(greedy decoding)"
        )
    if result.held_out is not None:
        title = "held out (never trained on)"
        _show_generation(
            console, model, tokenizer, result.held_out, result.held_out, title, how, args
        )
        console.print(
            "[dim]The held-out prompt is new to the model: a tiny model trained for a minute "
            "on a few rows learns them by heart, it does not generalise.[/]"
        )


def _load_trained(
    console: Any, config: Any, weights_dir: Any, base_dir: Any
) -> tuple[Any, Any, str]:
    """Load what training wrote back, as a user would: (model, tokenizer, how it was loaded)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_runtime.model.merge import load_adapter_model, merge

    if config.adapter == "none":
        model_dir = weights_dir  # a full fine-tune is already a complete model
        how = "full fine-tune"
    elif config.is_prompt_learning:
        console.print(f"{config.adapter} cannot be merged: generating with the adapter on its base")
        model, tokenizer = load_adapter_model(config, weights_dir, base_dir=base_dir)
        return model, tokenizer, "adapter on its base model"
    else:
        model_dir = merge(config, base_dir=base_dir)
        console.print(f"merged model: {model_dir}")
        how = "merged model"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return model, AutoTokenizer.from_pretrained(model_dir), how


def _show_generation(
    console: Any,
    model: Any,
    tokenizer: Any,
    prompt: Any,
    sample: Any,
    title: str,
    how: str,
    args: argparse.Namespace,
) -> bool:
    """Print one greedy generation in a panel, with the dataset's reference answer if known;
    True when the generation reproduces the reference exactly."""
    from rich.markup import escape
    from rich.panel import Panel

    from finetune_runtime.model.generate import generate

    ids = prompt.prompt_ids if hasattr(prompt, "prompt_ids") else prompt
    text = generate(model, tokenizer, ids, max_new_tokens=args.max_new_tokens).strip()
    prompt_text = tokenizer.decode(ids, skip_special_tokens=True).strip()
    body = f"[bold]prompt[/]\n{escape(prompt_text)}\n\n"
    matched = False
    if sample is not None:
        reference = tokenizer.decode(sample.reference_ids, skip_special_tokens=True).strip()
        matched = text == reference
        body += f"[bold]reference[/]\n{escape(reference)}\n\n"
    shown = escape(text) or "[dim](nothing: the model emitted end-of-sequence at once)[/]"
    verdict = ""
    if sample is not None:
        verdict = " [green]✓ matches the reference[/]" if matched else " [yellow]✗ differs[/]"
    body += f"[bold]generated[/] (greedy, {how}){verdict}\n{shown}"
    console.print(Panel(body, title=f"sample: {title}", expand=False))
    return matched
