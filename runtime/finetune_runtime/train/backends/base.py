"""The seam between the training loop and how a step is executed.

The loop (`finetune_runtime.train.loop`) is written once against `Backend`;
a backend decides what "backward", "optimizer step", "checkpoint" and
"all-reduce" mean for one process (`LocalBackend`), plain data parallelism
(`DDPBackend`, torch.distributed: gloo on CPU, nccl on CUDA) or DeepSpeed ZeRO
(`finetune_runtime.train.backends.deepspeed.DeepSpeedBackend`).

Contract the loop relies on, per optimizer step:

    for each micro-batch in the accumulation window (the last one: boundary=True):
        with backend.accumulate(boundary):
            with backend.autocast():
                loss = <sum of token losses of this micro-batch> / <loss tokens of the whole
                        window, summed over all micro-batches and all ranks>
            backend.backward(loss)
    grad_norm = backend.step()

So the step's objective is the *sum* of the losses passed to `backward` over
micro-batches and ranks (a token-weighted mean, exact for any padding and any
accumulation split). A backend makes the gradient equal to the gradient of that
sum, undoing whatever averaging its reduction does (DDP averages over ranks, so
DDPBackend multiplies by world_size; DeepSpeed also divides by its
gradient_accumulation_steps unless told not to). A window may be shorter than
gradient_accumulation_steps (the end of an epoch); `boundary` marks its end.

Checkpoints: the loop creates the directory and calls `save`/`load` on every
rank (they are collective). `save` persists what resuming needs that only the
backend knows how to store: trainable weights, optimizer, scheduler, grad scaler,
plus `client_state` (the loop's own counters); `load` restores them and returns
`client_state`. The loop separately exports human-usable weights (peft adapter
or HF model) from `export_state_dict()`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from safetensors.torch import load_file, save_file

from finetune_runtime.errors import CheckpointError, LaunchError
from finetune_runtime.train.hardware import (
    ResolvedPrecision,
    cpu_flags,
    cuda_supports_bf16,
    decide_precision,
)

if TYPE_CHECKING:
    from finetune_runtime.config import FineTuneConfig

log = logging.getLogger(__name__)


TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
SCALER_FILE = "scaler.pt"
CLIENT_STATE_FILE = "client_state.pt"


@dataclass(frozen=True)
class BackendOptions:
    """What every backend needs from the config, already resolved."""

    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = 1.0
    precision: ResolvedPrecision = "fp32"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)


@runtime_checkable
class Backend(Protocol):
    """How the loop's steps run. Every method is called on every rank unless noted."""

    rank: int
    local_rank: int
    world_size: int
    is_main: bool
    device: torch.device
    options: BackendOptions

    def prepare(self, model: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        """Wrap model/optimizer/scheduler for this backend; use only the returned objects."""
        ...

    def accumulate(self, boundary: bool) -> contextlib.AbstractContextManager[None]:
        """Wrap forward+backward of one micro-batch; gradients are synchronised
        across ranks only when `boundary` (the last micro-batch before `step`)."""
        ...

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """Wrap the forward pass: mixed precision when configured, else a no-op."""
        ...

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate gradients of `loss` (see the module docstring for its scaling)."""
        ...

    def step(self) -> float | None:
        """Clip, optimizer.step, scheduler.step, zero_grad; return the pre-clip grad norm."""
        ...

    def save(self, ckpt_dir: Path, client_state: dict[str, Any]) -> None:
        """Persist training state into the existing `ckpt_dir` (collective)."""
        ...

    def load(self, ckpt_dir: Path) -> dict[str, Any]:
        """Restore what `save` wrote and return its `client_state` (collective)."""
        ...

    def unwrap(self) -> Any:
        """The underlying peft/HF model (not a DDP/DeepSpeed wrapper)."""
        ...

    def export_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full state dict of `unwrap()` for saving weights (collective: ZeRO-3 gathers).
        Only rank 0's result must be complete; other ranks may get None."""
        ...

    def barrier(self) -> None: ...

    def all_reduce_mean(self, value: float) -> float: ...

    def all_reduce_sum(self, value: float) -> float: ...

    def close(self) -> None:
        """Release process groups; called once when training ends (also on failure)."""
        ...


# --------------------------------------------------------------------------- helpers


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


def resolve_precision(requested: str, device: torch.device) -> ResolvedPrecision:
    """`auto` → bf16 on CUDA with bf16 and on CPUs with native bf16 (AMX / AVX512-BF16),
    fp16 on older CUDA GPUs, fp32 elsewhere (see finetune_runtime.train.hardware)."""
    return _precision_and_reason(requested, device)[0]


def _precision_and_reason(requested: str, device: torch.device) -> tuple[ResolvedPrecision, str]:
    auto = requested == "auto"
    return decide_precision(
        requested,
        device.type,
        cuda_bf16=auto and device.type == "cuda" and cuda_supports_bf16(),
        cpu_flags=cpu_flags() if auto and device.type == "cpu" else (),
    )


def options_from_config(config: FineTuneConfig, device: torch.device) -> BackendOptions:
    t = config.training
    precision, why = _precision_and_reason(t.precision, device)
    if t.precision == "auto":
        log.info("precision %s (%s)", precision, why)
    return BackendOptions(
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        max_grad_norm=t.max_grad_norm,
        precision=precision,
    )


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().to("cpu").contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


# --------------------------------------------------------------------------- local


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


# --------------------------------------------------------------------------- DDP


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


# --------------------------------------------------------------------------- factory


def create_backend(
    config: FineTuneConfig,
    env: Mapping[str, str] | None = None,
    base_dir: str | Path | None = None,
) -> Backend:
    """DeepSpeed when `config.deepspeed` is set, DDP under torchrun (WORLD_SIZE>1), else local.

    `base_dir`: the config file's directory, where a relative DeepSpeed JSON path is found.
    """
    env = os.environ if env is None else env
    _, local_rank, world_size = distributed_env(env)
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    options = options_from_config(config, device)
    if config.deepspeed:
        from finetune_runtime.train.backends.deepspeed import DeepSpeedBackend

        backend: Backend = DeepSpeedBackend(config=config, options=options, base_dir=base_dir)
        return backend
    if world_size > 1:
        return DDPBackend(options, env)
    return LocalBackend(options, device)


@contextlib.contextmanager
def closing(backend: Backend) -> Iterator[Backend]:
    try:
        yield backend
    finally:
        backend.close()
