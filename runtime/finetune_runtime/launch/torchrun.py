"""From the pod's environment to a torchrun command line (pure; no I/O).

The operator (like Kubeflow's PyTorchJob) describes a worker's place in the gang
with `PET_*` environment variables; plain `MASTER_ADDR`/`NNODES`/... are accepted
as fallbacks so the same image runs under other launchers (Slurm scripts,
Kubeflow's legacy env, a laptop). Rendezvous is torchrun's *static* backend:
node ranks are fixed by the pod index, so global rank 0 always lives on
worker 0 - the pod the operator polls for progress and whose DNS name every
other worker waits for. Restarts belong to the operator (it replaces the whole
gang), so torchrun never restarts workers itself (`--max-restarts 0`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from finetune_runtime import contract
from finetune_runtime.errors import LaunchError

DEFAULT_MASTER_PORT = contract.RENDEZVOUS_PORT
TRAIN_ENTRYPOINT = ("-m", "finetune_runtime.cli", "train")

# Each setting: the env names that may carry it, first match wins.
NNODES_VARS = (contract.ENV_NNODES, "NNODES")
NODE_RANK_VARS = (contract.ENV_NODE_RANK, "NODE_RANK")
NPROC_VARS = (contract.ENV_NPROC_PER_NODE, "NPROC_PER_NODE")
MASTER_ADDR_VARS = (contract.ENV_MASTER_ADDR, "MASTER_ADDR")
MASTER_PORT_VARS = (contract.ENV_MASTER_PORT, "MASTER_PORT")
# Kubeflow's legacy (non-PET) env: WORLD_SIZE and RANK describe pods when torchrun is not
# told otherwise. WORLD_SIZE may also be the total process count (torch's own meaning).
WORLD_SIZE_VAR = "WORLD_SIZE"
RANK_VAR = "RANK"


@dataclass(frozen=True)
class LaunchPlan:
    """Where this node sits in the gang, resolved and checked."""

    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str | None  # None: single node with nothing given -> torchrun --standalone
    master_port: int

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    @property
    def standalone(self) -> bool:
        return self.master_addr is None

    @property
    def waits_for_master(self) -> bool:
        """Workers other than node 0 must not start torchrun before the master listens."""
        return self.node_rank > 0


def visible_gpu_count() -> int:
    """GPUs this process can see (0 without CUDA). Imports torch lazily."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _first(env: Mapping[str, str], names: Sequence[str]) -> tuple[str, str] | None:
    for name in names:
        value = env.get(name)
        if value is not None and value.strip() != "":
            return name, value.strip()
    return None


def _int(name: str, value: str, *, minimum: int) -> int:
    try:
        number = int(value, 10)
    except ValueError:
        raise LaunchError(f"{name}={value!r} is not a whole number") from None
    if number < minimum:
        raise LaunchError(f"{name}={value!r} must be at least {minimum}")
    return number


def _nnodes(name: str, value: str) -> int:
    """A node count; torchrun's elastic 'MIN:MAX' form is accepted only when MIN == MAX."""
    if ":" in value:
        low, _, high = value.partition(":")
        lo, hi = _int(name, low, minimum=1), _int(name, high, minimum=1)
        if lo != hi:
            raise LaunchError(
                f"{name}={value!r} asks for elastic training ({lo} to {hi} nodes); this launcher "
                "uses static rendezvous (fixed gang, the operator restarts it as a whole): "
                "give one number"
            )
        return lo
    return _int(name, value, minimum=1)


def _nproc(name: str, value: str, gpu_count: Callable[[], int]) -> int:
    if value.lower() in ("auto", "gpu"):
        return max(gpu_count(), 1)
    return _int(name, value, minimum=1)


def resolve_plan(
    env: Mapping[str, str], gpu_count: Callable[[], int] = visible_gpu_count
) -> LaunchPlan:
    """Read and check the gang position from `env`; raise LaunchError when inconsistent."""
    found = _first(env, NPROC_VARS)
    nproc = _nproc(*found, gpu_count) if found else _nproc("nproc", "auto", gpu_count)

    world = _first(env, (WORLD_SIZE_VAR,))
    world_size = _int(*world, minimum=1) if world else None
    found = _first(env, NNODES_VARS)
    if found:
        nnodes = _nnodes(*found)
        if world_size is not None and world_size not in (nnodes, nnodes * nproc):
            raise LaunchError(
                f"{WORLD_SIZE_VAR}={world_size} matches neither {found[0]}={nnodes} (pods) nor "
                f"{found[0]} x nproc-per-node = {nnodes * nproc} (processes): fix one of them"
            )
    elif world_size is not None:
        if world_size % nproc:
            raise LaunchError(
                f"{WORLD_SIZE_VAR}={world_size} is not a multiple of nproc-per-node={nproc}; "
                f"set {NNODES_VARS[0]} explicitly"
            )
        nnodes = world_size // nproc
    else:
        nnodes = 1

    found = _first(env, NODE_RANK_VARS) or _first(env, (RANK_VAR,))
    node_rank = _int(*found, minimum=0) if found else 0
    if node_rank >= nnodes:
        assert found is not None
        raise LaunchError(
            f"{found[0]}={node_rank} but the gang has {nnodes} node(s): node ranks run from 0 "
            f"to {nnodes - 1}"
        )

    port_found = _first(env, MASTER_PORT_VARS)
    port = _int(*port_found, minimum=1) if port_found else DEFAULT_MASTER_PORT
    if port > 65535:
        assert port_found is not None
        raise LaunchError(f"{port_found[0]}={port} is not a TCP port (1-65535)")

    addr_found = _first(env, MASTER_ADDR_VARS)
    if addr_found is None and nnodes > 1:
        raise LaunchError(
            f"{nnodes} nodes need a master address: set {MASTER_ADDR_VARS[0]} (or "
            f"{MASTER_ADDR_VARS[1]}) to node 0's host name"
        )
    master_addr = addr_found[1] if addr_found else None
    if master_addr is None and port_found is not None:
        master_addr = "127.0.0.1"  # a port but no address: a single node listening locally
    return LaunchPlan(
        nnodes=nnodes,
        node_rank=node_rank,
        nproc_per_node=nproc,
        master_addr=master_addr,
        master_port=port,
    )


def plan_args(plan: LaunchPlan) -> list[str]:
    """torchrun's own options for `plan` (before the entrypoint)."""
    args = ["--nnodes", str(plan.nnodes), "--nproc-per-node", str(plan.nproc_per_node)]
    if plan.standalone:
        # One node, no address given: c10d on a free local port, so local runs never collide.
        args.append("--standalone")
    else:
        assert plan.master_addr is not None
        args += [
            "--rdzv-backend",
            "static",
            "--node-rank",
            str(plan.node_rank),
            "--master-addr",
            plan.master_addr,
            "--master-port",
            str(plan.master_port),
        ]
    args += ["--max-restarts", "0"]
    return args


def torchrun_args(
    env: Mapping[str, str],
    config_path: str,
    extra: Sequence[str] = (),
    gpu_count: Callable[[], int] = visible_gpu_count,
) -> list[str]:
    """Arguments for `python -m torch.distributed.run` that train `config_path`.

    `extra` is passed through to `finetune train` after the config path.
    """
    if not config_path:
        raise LaunchError("no config file given: pass --config FILE")
    plan = resolve_plan(env, gpu_count)
    return [*plan_args(plan), *TRAIN_ENTRYPOINT, config_path, *extra]


def launch_command(args: Sequence[str], python: str | None = None) -> list[str]:
    """The full argv: this interpreter running torch's launcher (no PATH lookup)."""
    return [python or sys.executable, "-m", "torch.distributed.run", *args]
