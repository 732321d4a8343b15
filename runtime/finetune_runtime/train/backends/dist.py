"""torch.distributed plumbing shared by the multi-process backends (DDP, DeepSpeed):
the rank layout torchrun exports and the collectives over the default process group."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from finetune_runtime.errors import LaunchError


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise LaunchError(f"environment variable {name}={raw!r} is not an integer") from None


def distributed_env(env: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, local_rank, world_size) as torchrun sets them; (0, 0, 1) outside torchrun."""
    env = os.environ if env is None else env
    world_size = env_int(env, "WORLD_SIZE", 1)
    rank = env_int(env, "RANK", 0)
    local_rank = env_int(env, "LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise LaunchError(f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={world_size}")
    return rank, local_rank, world_size


class DistCollectives:
    """barrier / all-reduce / close over torch.distributed's default process group,
    shared by the multi-process backends (DDP, DeepSpeed). List it first among the bases."""

    device: torch.device
    world_size: int

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def all_reduce_sum(self, value: float) -> float:
        import torch.distributed as dist

        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item())

    def all_reduce_mean(self, value: float) -> float:
        return self.all_reduce_sum(value) / self.world_size

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
