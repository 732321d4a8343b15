"""`finetune-operator`: run the FineTuneJob controller (kopf, standalone, no peering)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import kopf

from finetune_operator import handlers


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="finetune-operator",
        description="Run the FineTuneJob controller against the cluster the kubeconfig "
        "(or the in-cluster service account) points at.",
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="Watch this namespace (repeatable; globs allowed). Default: all namespaces.",
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="Watch all namespaces (default)."
    )
    p.add_argument("--metrics-port", type=int, default=8080, help="Prometheus port (0: off).")
    p.add_argument("--health-port", type=int, default=8081, help="Liveness /healthz port (0: off).")
    p.add_argument(
        "--bind-address",
        default=os.environ.get("FINETUNE_OPERATOR_BIND_ADDRESS", "0.0.0.0"),
        help="Address for the metrics and health servers.",
    )
    p.add_argument(
        "--default-image",
        default=os.environ.get("FINETUNE_OPERATOR_IMAGE", handlers.OperatorConfig.default_image),
        help="Runtime image for jobs that set no spec.image ($FINETUNE_OPERATOR_IMAGE).",
    )
    p.add_argument(
        "--progress-port",
        type=int,
        default=int(os.environ.get("FINETUNE_OPERATOR_PROGRESS_PORT", "9400")),
        help="Port rank 0 serves its progress on (FINETUNE_PROGRESS_PORT in the pods).",
    )
    p.add_argument(
        "--resync-seconds",
        type=float,
        default=_env_float("FINETUNE_OPERATOR_RESYNC_SECONDS", 5.0),
        help="Reconcile (and progress poll) interval per job; pod changes act at once.",
    )
    p.add_argument(
        "--log-format",
        choices=["json", "plain", "full"],
        default=os.environ.get("FINETUNE_OPERATOR_LOG_FORMAT", "json"),
    )
    p.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.resync_seconds <= 0:
        print("finetune-operator: --resync-seconds must be > 0", file=sys.stderr)
        return 2
    log_format = {
        "json": kopf.LogFormat.JSON,
        "plain": kopf.LogFormat.PLAIN,
        "full": kopf.LogFormat.FULL,
    }[args.log_format]
    kopf.configure(verbose=args.verbose, log_format=log_format)
    if not args.verbose:  # kopf logs every handled watch event at INFO: too chatty for pods
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    config = handlers.OperatorConfig(
        default_image=args.default_image,
        progress_port=args.progress_port,
        metrics_port=args.metrics_port or None,
        resync_seconds=args.resync_seconds,
    )
    state = handlers.State(config=config, bind_address=args.bind_address)
    liveness = (
        f"http://{args.bind_address}:{args.health_port}/healthz" if args.health_port else None
    )
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=liveness,
        memo=kopf.Memo(state=state),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
