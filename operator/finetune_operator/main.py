"""`finetune-operator`: run the FineTuneJob controller (kopf, standalone, no peering).

With `--leader-elect` several replicas may run: each waits for the Lease
(finetune_operator.leader) and only the holder starts the controller; a replica that
loses the Lease stops reconciling and exits, so its pod restarts as a standby.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kopf

from finetune_operator import handlers
from finetune_runtime import contract


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def _fs_group(value: str) -> int | None:
    if value.lower() in ("", "none"):
        return None
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be a group id >= 0, or 'none'")
    return number


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="finetune-operator",
        description="Run the FineTuneJob controller against the cluster the kubeconfig "
        "(or the in-cluster service account) points at.",
    )
    _scope_arguments(p)
    _server_arguments(p)
    _worker_arguments(p)
    _leader_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")
    return p


def _scope_arguments(p: argparse.ArgumentParser) -> None:
    """Which namespaces the controller watches."""
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


def _server_arguments(p: argparse.ArgumentParser) -> None:
    """Metrics and health endpoints."""
    p.add_argument("--metrics-port", type=int, default=8080, help="Prometheus port (0: off).")
    p.add_argument("--health-port", type=int, default=8081, help="Liveness /healthz port (0: off).")
    p.add_argument(
        "--bind-address",
        default=os.environ.get("FINETUNE_OPERATOR_BIND_ADDRESS", "0.0.0.0"),
        help="Address for the metrics and health servers.",
    )


def _worker_arguments(p: argparse.ArgumentParser) -> None:
    """What shapes the worker pods and the reconcile loop."""
    p.add_argument(
        "--default-image",
        default=os.environ.get("FINETUNE_OPERATOR_IMAGE", handlers.OperatorConfig.default_image),
        help="Runtime image for jobs that set no spec.image ($FINETUNE_OPERATOR_IMAGE).",
    )
    p.add_argument(
        "--progress-port",
        type=int,
        default=int(os.environ.get("FINETUNE_OPERATOR_PROGRESS_PORT", contract.PROGRESS_PORT)),
        help=f"Port rank 0 serves its progress on ({contract.ENV_PROGRESS_PORT} in the pods).",
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
    p.add_argument(
        "--worker-fs-group",
        type=_fs_group,
        default=_fs_group(os.environ.get("FINETUNE_OPERATOR_WORKER_FS_GROUP", "1000")),
        help="fsGroup of worker pods so the non-root trainer can write the checkpoint volume "
        "('none': leave it to the platform, e.g. OpenShift's restricted SCC).",
    )


def _leader_arguments(p: argparse.ArgumentParser) -> None:
    """Leader election between replicas."""
    p.add_argument(
        "--leader-elect",
        action="store_true",
        default=os.environ.get("FINETUNE_OPERATOR_LEADER_ELECT", "") == "true",
        help="Run as one of several replicas: only the holder of a coordination.k8s.io "
        "Lease reconciles.",
    )
    p.add_argument(
        "--leader-election-namespace",
        default=os.environ.get("POD_NAMESPACE", "default"),
        help="Namespace of the Lease (default: $POD_NAMESPACE).",
    )
    p.add_argument("--leader-election-id", default="finetune-operator", help="Lease name.")
    p.add_argument(
        "--leader-lease-seconds",
        type=float,
        default=15.0,
        help="How long a standby waits after the leader's last renewal before taking over.",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.resync_seconds <= 0:
        print("finetune-operator: --resync-seconds must be > 0", file=sys.stderr)
        return 2
    if args.leader_lease_seconds < 1:
        print("finetune-operator: --leader-lease-seconds must be >= 1", file=sys.stderr)
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
        worker_fs_group=args.worker_fs_group,
    )
    state = handlers.State(config=config, bind_address=args.bind_address)
    liveness = (
        f"http://{args.bind_address}:{args.health_port}/healthz" if args.health_port else None
    )

    def run_controller(
        loop: asyncio.AbstractEventLoop | None = None, stop_flag: asyncio.Event | None = None
    ) -> None:
        kopf.run(
            loop=loop,
            standalone=True,
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=liveness,
            memo=kopf.Memo(state=state),
            stop_flag=stop_flag,
        )

    if not args.leader_elect:
        run_controller()
        return 0
    return _lead_then_run(args, run_controller)


def _lead_then_run(
    args: argparse.Namespace,
    run_controller: Callable[[asyncio.AbstractEventLoop, asyncio.Event], None],
) -> int:
    """Wait for the Lease (answering /healthz as a healthy standby), then run the
    controller until SIGTERM or a lost Lease; exit 1 on the latter."""
    import kubernetes

    from finetune_operator.kube import load_configuration
    from finetune_operator.leader import LeaseElector, LeaseTiming, default_identity

    api = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(load_configuration()))
    elector = LeaseElector(
        api,
        args.leader_election_namespace,
        args.leader_election_id,
        default_identity(),
        LeaseTiming.for_duration(args.leader_lease_seconds),
    )
    stop, lost = threading.Event(), threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    standby = _standby_health(args.bind_address, args.health_port)
    try:
        leading = elector.acquire(stop)
    finally:
        if standby is not None:
            standby.shutdown()
            standby.server_close()
        signal.signal(signal.SIGTERM, previous)
    if not leading:
        return 0
    # kopf handles SIGTERM itself; a lost Lease stops it through an asyncio.Event set on
    # its loop (a threading.Event would park an executor thread that never lets go).
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    stop_kopf = asyncio.Event()
    renewer = threading.Thread(
        target=elector.keep,
        args=(lost, stop, lambda: loop.call_soon_threadsafe(stop_kopf.set)),
        name="lease-renewer",
        daemon=True,
    )
    renewer.start()
    try:
        run_controller(loop, stop_kopf)
    finally:
        stop.set()
        renewer.join(timeout=5)
        if not lost.is_set():
            elector.release()
        loop.close()
    return 1 if lost.is_set() else 0


def _standby_health(address: str, port: int) -> ThreadingHTTPServer | None:
    """/healthz for a replica waiting for the Lease (kopf serves it once leading)."""
    if not port:
        return None

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            code = 200 if self.path == "/healthz" else 404
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"standby\n" if code == 200 else b"")

        def log_message(self, *_: object) -> None:
            return

    server = ThreadingHTTPServer((address, port), Health)
    threading.Thread(target=server.serve_forever, name="standby-health", daemon=True).start()
    return server


if __name__ == "__main__":
    sys.exit(main())
