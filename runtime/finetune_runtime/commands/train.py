"""`finetune train CONFIG`: validate, load, train (locally or as one torchrun rank)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from finetune_runtime import contract

PROGRESS_HOST_ENV = contract.ENV_PROGRESS_HOST


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by `train` and `run`."""
    parser.add_argument(
        "--output-dir",
        help="override output_dir from the config (relative to the working directory; a "
        "relative output_dir in the config is relative to the config file)",
    )
    parser.add_argument(
        "--max-steps", type=int, help="stop after this many optimizer steps (overrides epochs)"
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CHECKPOINT",
        help="resume from CHECKPOINT (a checkpoint-<step> name in output_dir, or a path), or "
        "without it from the newest intact checkpoint in output_dir "
        "(default: training.auto_resume)",
    )
    parser.add_argument(
        "--no-resume",
        dest="resume",
        action="store_const",
        const=False,
        help="start afresh even if output_dir holds checkpoints",
    )
    parser.add_argument(
        "--resume-with-changes",
        action="store_true",
        help="resume even though the config differs from the checkpoint's in settings that "
        "change the result (they are listed in the log)",
    )


def add_progress_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress-port",
        type=int,
        help="port of rank 0's /progress and /metrics endpoint (default: "
        f"${contract.ENV_PROGRESS_PORT} or {contract.PROGRESS_PORT}; 0 picks a free port)",
    )
    parser.add_argument(
        "--progress-host",
        help=f"address the progress endpoint binds (default: ${PROGRESS_HOST_ENV}, else "
        "0.0.0.0 in a Kubernetes pod and 127.0.0.1 elsewhere)",
    )
    parser.add_argument(
        "--no-progress-server",
        dest="progress_server",
        action="store_false",
        help="do not serve /progress and /metrics (local runs)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune from a config (one process, or one rank under torchrun)",
        description="Validate CONFIG, load the model and data, and train. Resumes from the "
        "newest intact checkpoint in output_dir unless --no-resume. Exit codes: 0 done, "
        "2 config, 3 dataset, 4 model, 5 checkpoint/output_dir, 6 upload, 8 diverged "
        "(NaN/Inf), 9 weights failed verification, 10 output_dir locked by another run, "
        "143 stopped by SIGTERM/SIGINT after checkpointing (see docs/reliability.md).",
    )
    parser.add_argument("config", help="training config (YAML or JSON)")
    add_run_arguments(parser)
    add_progress_arguments(parser)
    add_output_arguments(parser)
    parser.set_defaults(func=main)


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Where rank 0 publishes the finished weights (see finetune_runtime.storage.publish)."""
    from finetune_runtime.storage import publish as outputs

    parser.add_argument(
        "--output-uri",
        metavar="S3_URI",
        help="after training, upload output_dir/adapter (or model) to S3_URI/adapter/ "
        f"(or /model/); default ${outputs.URI_ENV}",
    )
    parser.add_argument(
        "--merge",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --output-uri: also merge the adapter into the base model and upload it to "
        f"S3_URI/merged/ (default ${outputs.MERGE_ENV})",
    )
    parser.add_argument(
        "--output-endpoint-url",
        help=f"S3 endpoint for the upload (default ${outputs.ENDPOINT_ENV}, then the AWS chain)",
    )
    parser.add_argument(
        "--output-region", help=f"region for the upload (default ${outputs.REGION_ENV})"
    )


def load_with_overrides(args: argparse.Namespace) -> Any:
    """The config file with --output-dir applied, validated like the file itself."""
    from finetune_runtime.config import check_safe_path, load_config
    from finetune_runtime.errors import ConfigError
    from finetune_runtime.storage.outdir import resolve_output_dir

    config = load_config(args.config)
    base_dir = Path(args.config).resolve().parent
    config = config.model_copy(
        update={"output_dir": resolve_output_dir(config.output_dir, base_dir)}
    )
    if args.output_dir:
        try:
            output_dir = check_safe_path(args.output_dir)
        except ValueError as exc:
            raise ConfigError(f"--output-dir: {exc}") from None
        config = config.model_copy(update={"output_dir": output_dir})
    if args.max_steps is not None and args.max_steps < 1:
        raise ConfigError("--max-steps must be at least 1")
    return config


def default_progress_host(env: Any = None) -> str:
    """Every interface in a pod (the operator polls the pod IP), loopback on a laptop."""
    env = os.environ if env is None else env
    return "0.0.0.0" if env.get("KUBERNETES_SERVICE_HOST") else "127.0.0.1"


def train_options(args: argparse.Namespace, base_dir: Path | None) -> Any:
    from finetune_runtime.train.loop import TrainOptions

    resume = args.resume
    return TrainOptions(
        base_dir=base_dir,
        max_steps=args.max_steps,
        resume=True if isinstance(resume, str) else resume,
        resume_from=resume if isinstance(resume, str) else None,
        resume_with_changes=getattr(args, "resume_with_changes", False),
        serve_progress=getattr(args, "progress_server", False),
        progress_port=getattr(args, "progress_port", None),
        progress_host=getattr(args, "progress_host", None)
        or os.environ.get(PROGRESS_HOST_ENV, "").strip()
        or default_progress_host(),
    )


def main(args: argparse.Namespace) -> int:
    from finetune_runtime.model.merge import merge
    from finetune_runtime.storage import publish as outputs
    from finetune_runtime.train.backends.dist import distributed_env
    from finetune_runtime.train.loop import train
    from finetune_runtime.train.signals import EXIT_PREEMPTED

    config = load_with_overrides(args)
    target = outputs.resolve_target(
        args.output_uri, args.merge, args.output_endpoint_url, args.output_region
    )
    if target is not None:
        outputs.check_target(target, config.adapter)
    base_dir = Path(args.config).resolve().parent
    result = train(config, train_options(args, base_dir))
    if result.stopped:
        return EXIT_PREEMPTED
    rank, _, _ = distributed_env()
    if target is not None and rank == 0 and result.weights_dir is not None:
        weights = result.weights_dir
        outputs.publish(target, weights, lambda: merge(config, adapter=weights, base_dir=base_dir))
    return 0
