"""`finetune launch --config FILE [-- TRAIN ARGS]`: the worker pod's entrypoint.

Reads the gang position from the environment (see `finetune_runtime.launch.torchrun`),
waits for node 0 when this is another node, then runs torchrun with
`finetune train CONFIG` as each process, forwarding SIGTERM/SIGINT so the
trainers can checkpoint before the pod's grace period ends.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping
from types import FrameType

from finetune_runtime import contract
from finetune_runtime.errors import EXIT_PREEMPTED, LaunchError

log = logging.getLogger("finetune_runtime.launch.torchrun")

TIMEOUT_ENV = contract.ENV_RENDEZVOUS_TIMEOUT
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

# Command-line overrides for the env contract: flag -> the PET_* variable it sets.
OVERRIDES = {
    "nnodes": contract.ENV_NNODES,
    "node_rank": contract.ENV_NODE_RANK,
    "nproc_per_node": contract.ENV_NPROC_PER_NODE,
    "master_addr": contract.ENV_MASTER_ADDR,
    "master_port": contract.ENV_MASTER_PORT,
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "launch",
        help="Run `finetune train` under torchrun, placed in the gang by PET_* env vars.",
        description=(
            "Compute torchrun arguments from PET_NNODES, PET_NODE_RANK, PET_NPROC_PER_NODE, "
            "PET_MASTER_ADDR, PET_MASTER_PORT (or MASTER_ADDR/MASTER_PORT/WORLD_SIZE/RANK/"
            "NNODES/NODE_RANK), wait for node 0 on other nodes, then run torchrun. Arguments "
            "after `--` go to `finetune train`."
        ),
    )
    p.add_argument("--config", required=True, metavar="FILE", help="training config (YAML)")
    p.add_argument("--nnodes", help="override PET_NNODES")
    p.add_argument("--node-rank", help="override PET_NODE_RANK")
    p.add_argument("--nproc-per-node", help="override PET_NPROC_PER_NODE (a number, auto, gpu)")
    p.add_argument("--master-addr", help="override PET_MASTER_ADDR")
    p.add_argument("--master-port", help="override PET_MASTER_PORT")
    p.add_argument(
        "--rendezvous-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"how long other nodes wait for node 0 (default ${TIMEOUT_ENV} or 600)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the torchrun command and exit")
    p.add_argument("train_args", nargs="*", metavar="TRAIN_ARGS", help="after `--`: train flags")
    p.set_defaults(func=run)


def effective_env(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, str]:
    merged = dict(env)
    for attr, name in OVERRIDES.items():
        value = getattr(args, attr, None)
        if value is not None:
            merged[name] = str(value)
    return merged


def run_label(env: Mapping[str, str]) -> str:
    """`FineTuneJob NAME attempt N: ` when the operator started this pod, else ``: which
    gang a log line came from when several attempts' logs are read together."""
    job, attempt = contract.run_identity(env)
    if job is None:
        return ""
    return f"FineTuneJob {job}" + (f" attempt {attempt}" if attempt is not None else "") + ": "


def rendezvous_timeout(args: argparse.Namespace, env: Mapping[str, str]) -> float:
    if args.rendezvous_timeout is not None:
        return float(args.rendezvous_timeout)
    raw = env.get(TIMEOUT_ENV)
    if raw is None or not raw.strip():
        from finetune_runtime.launch.rendezvous import DEFAULT_TIMEOUT_S

        return DEFAULT_TIMEOUT_S
    try:
        return float(raw)
    except ValueError:
        raise LaunchError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None


def run(args: argparse.Namespace) -> int:
    from finetune_runtime.launch.rendezvous import resolves, wait_for_master
    from finetune_runtime.launch.torchrun import launch_command, resolve_plan, torchrun_args

    env = effective_env(args, os.environ)
    extra = [a for a in args.train_args if a != "--"]
    plan = resolve_plan(env)
    command = launch_command(torchrun_args(env, args.config, extra))
    log.info(
        "%snode %d/%d, %d process(es) per node, world size %d, master %s",
        run_label(env),
        plan.node_rank,
        plan.nnodes,
        plan.nproc_per_node,
        plan.world_size,
        f"{plan.master_addr}:{plan.master_port}" if plan.master_addr else "local (standalone)",
    )
    if args.dry_run:
        print(shlex.join(command))
        return 0
    if not os.path.isfile(args.config):
        raise LaunchError(f"config file not found: {args.config}")
    check_config(args.config, plan.world_size)
    if plan.master_addr is not None and plan.nnodes > 1:
        timeout = rendezvous_timeout(args, env)
        if plan.waits_for_master:
            wait_for_master(plan.master_addr, plan.master_port, timeout)
        else:
            wait_for_master(plan.master_addr, plan.master_port, timeout, probe_fn=resolves)
    return supervise_recording_exit(command, env)


def supervise_recording_exit(command: list[str], env: Mapping[str, str]) -> int:
    """supervise(), returning a trainer's own exit code (e.g. 8, diverged) rather than
    torchrun's generic 1: the trainers record theirs in $FINETUNE_EXIT_FILE."""
    import tempfile

    from finetune_runtime.launch.exit_file import recorded_exit

    with tempfile.TemporaryDirectory(prefix="finetune-launch-") as tmp:
        exit_file = os.path.join(tmp, "exit-code")
        code = supervise(command, {**env, contract.ENV_EXIT_FILE: exit_file})
        recorded = recorded_exit(exit_file)
    if code not in (0, EXIT_PREEMPTED) and recorded is not None:
        trainer_code, message = recorded
        # Last, after torchrun's own failure report: what a log tail should show.
        log.error("a trainer exited with %d: %s", trainer_code, message or "(no message)")
        return trainer_code
    return code


def check_config(path: str, world_size: int) -> None:
    """Fail once, here, on a bad config, rather than once per rank after torchrun starts.

    The DeepSpeed settings are checked against the real world size, which only the
    launcher knows before training starts (e.g. an explicit train_batch_size).
    """
    from pathlib import Path

    from finetune_runtime.config import load_config

    config = load_config(path)
    if config.deepspeed is not None:
        from finetune_runtime.train.backends.deepspeed_config import build

        build(config, world_size, base_dir=Path(path).resolve().parent)


def supervise(command: list[str], env: Mapping[str, str]) -> int:
    """Run `command`, forward termination signals to it, return its exit code.

    The child gets its own session so a terminal's Ctrl-C reaches it once (through
    us), not twice. When we forwarded SIGTERM and the child then failed, the exit
    code is 143 (128 + SIGTERM): torchrun reports a signalled shutdown as a plain
    failure, yet the run was preempted, not broken.
    """
    log.info("exec: %s", shlex.join(command))
    child = subprocess.Popen(command, env=dict(env), start_new_session=True)
    received: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        log.warning("received %s: forwarding to torchrun", signal.Signals(signum).name)
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if child.poll() is None:  # only on an unexpected exception above
            child.kill()
            child.wait()
    if code < 0:  # killed by a signal
        code = 128 - code
    if received and code != 0:
        code = 128 + received[0]
    log.info("torchrun exited with %d", code)
    sys.stdout.flush()
    return code
