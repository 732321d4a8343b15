"""One process (`LocalBackend`) and torch DDP (`DDPBackend`): plain torch steps with
optional autocast and GradScaler; checkpoints as safetensors + torch state files
written by rank 0 (the state is replicated across data-parallel ranks)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from finetune_runtime.errors import CheckpointError, LaunchError
from finetune_runtime.train.backends.base import BackendOptions
from finetune_runtime.train.backends.dist import DistCollectives, distributed_env

TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
SCALER_FILE = "scaler.pt"
CLIENT_STATE_FILE = "client_state.pt"


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().to("cpu").contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


class LocalBackend:
    """One process, one device: plain torch with optional autocast and GradScaler."""

    def __init__(
        self,
        options: BackendOptions,
        device: torch.device | None = None,
        *,
        rank: int = 0,
        local_rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.options = options
        self.rank, self.local_rank, self.world_size = rank, local_rank, world_size
        self.is_main = rank == 0
        if device is None:
            device = torch.device("cuda", local_rank) if torch.cuda.is_available() else None
            device = device or torch.device("cpu")
        self.device = device
        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.scaler: torch.amp.GradScaler | None = None
        if options.precision == "fp16":
            self.scaler = torch.amp.GradScaler(device.type)

    # -- setup --------------------------------------------------------------

    def prepare(self, model: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        return model, optimizer, scheduler

    def unwrap(self) -> Any:
        return self._model

    @property
    def _model(self) -> torch.nn.Module:
        if self.model is None:
            raise RuntimeError("backend.prepare() has not been called")
        return self.model

    # -- stepping -------------------------------------------------------------

    def accumulate(self, boundary: bool) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        dtype = self.options.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _loss_scale(self) -> float:
        return 1.0

    def backward(self, loss: torch.Tensor) -> None:
        loss = loss * self._loss_scale()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def step(self) -> float | None:
        assert self.optimizer is not None
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self._model.parameters() if p.requires_grad and p.grad is not None]
        max_norm = self.options.max_grad_norm
        norm: float | None = None
        if params:
            # With no clipping configured the norm is still measured (for logging);
            # an infinite max_norm makes the rescale a no-op.
            total = torch.nn.utils.clip_grad_norm_(
                params, max_norm if max_norm is not None and max_norm > 0 else float("inf")
            )
            norm = float(total)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    # -- checkpoints ------------------------------------------------------------

    def save(self, ckpt_dir: Path, client_state: dict[str, Any]) -> None:
        # State is replicated across data-parallel ranks: rank 0 writes it all.
        if self.is_main:
            assert self.optimizer is not None
            save_file(_trainable_state(self._model), str(ckpt_dir / TRAINABLE_FILE))
            torch.save(self.optimizer.state_dict(), ckpt_dir / OPTIMIZER_FILE)
            if self.scheduler is not None:
                torch.save(self.scheduler.state_dict(), ckpt_dir / SCHEDULER_FILE)
            if self.scaler is not None:
                torch.save(self.scaler.state_dict(), ckpt_dir / SCALER_FILE)
            torch.save(client_state, ckpt_dir / CLIENT_STATE_FILE)
        self.barrier()

    def load(self, ckpt_dir: Path) -> dict[str, Any]:
        assert self.optimizer is not None
        model = self._model
        try:
            weights = load_file(str(ckpt_dir / TRAINABLE_FILE), device=str(self.device))
            expected = {n for n, p in model.named_parameters() if p.requires_grad}
            if set(weights) != expected:
                missing = sorted(expected - set(weights))[:3]
                extra = sorted(set(weights) - expected)[:3]
                raise CheckpointError(
                    f"{ckpt_dir}: trainable weights do not match this model "
                    f"(missing {missing}, unexpected {extra}); was it written with a different "
                    "adapter or base model? Point resume_from_checkpoint elsewhere or use a new "
                    "output_dir"
                )
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, tensor in weights.items():
                    params[name].copy_(tensor)
            self.optimizer.load_state_dict(
                torch.load(ckpt_dir / OPTIMIZER_FILE, map_location=self.device, weights_only=True)
            )
            if self.scheduler is not None:
                self.scheduler.load_state_dict(
                    torch.load(ckpt_dir / SCHEDULER_FILE, weights_only=True)
                )
            if self.scaler is not None and (ckpt_dir / SCALER_FILE).is_file():
                self.scaler.load_state_dict(torch.load(ckpt_dir / SCALER_FILE, weights_only=True))
            client_state: dict[str, Any] = torch.load(
                ckpt_dir / CLIENT_STATE_FILE, weights_only=True
            )
        except FileNotFoundError as exc:
            raise CheckpointError(f"{ckpt_dir}: checkpoint is missing {exc.filename}") from exc
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{ckpt_dir}: cannot restore training state: {exc}") from exc
        return client_state

    def export_state_dict(self) -> dict[str, torch.Tensor] | None:
        return self._model.state_dict()

    # -- collectives (trivial in one process) -----------------------------------

    def barrier(self) -> None:
        return None

    def all_reduce_mean(self, value: float) -> float:
        return float(value)

    def all_reduce_sum(self, value: float) -> float:
        return float(value)

    def close(self) -> None:
        return None


class DDPBackend(DistCollectives, LocalBackend):
    """torch.distributed data parallelism (one process per device, started by torchrun)."""

    def __init__(self, options: BackendOptions, env: Mapping[str, str] | None = None) -> None:
        import torch.distributed as dist

        rank, local_rank, world_size = distributed_env(env)
        if torch.cuda.is_available():
            device, pg_backend = torch.device("cuda", local_rank), "nccl"
            torch.cuda.set_device(device)
        else:
            device, pg_backend = torch.device("cpu"), "gloo"
        if not dist.is_initialized():
            try:
                # Rendezvous (MASTER_ADDR/MASTER_PORT) comes from the process environment.
                dist.init_process_group(backend=pg_backend, rank=rank, world_size=world_size)
            except (RuntimeError, ValueError) as exc:
                raise LaunchError(
                    f"cannot join the process group ({pg_backend}, rank {rank}/{world_size}): "
                    f"{exc}; check MASTER_ADDR/MASTER_PORT and that every rank started"
                ) from exc
        super().__init__(options, device, rank=rank, local_rank=local_rank, world_size=world_size)
        self.ddp: torch.nn.parallel.DistributedDataParallel | None = None

    def prepare(self, model: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(model, device_ids=device_ids)
        super().prepare(model, optimizer, scheduler)
        return self.ddp, optimizer, scheduler

    def accumulate(self, boundary: bool) -> contextlib.AbstractContextManager[None]:
        if boundary or self.ddp is None:
            return contextlib.nullcontext()
        return self.ddp.no_sync()

    def _loss_scale(self) -> float:
        # DDP averages gradients over ranks; the loop's losses are already normalised
        # by the global token count, so the sum (not the mean) is what is wanted.
        return float(self.world_size)
