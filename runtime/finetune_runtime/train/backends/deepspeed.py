"""DeepSpeed ZeRO (stages 1-3, optional CPU offload) behind the loop's `Backend` seam.

The loop keeps owning what it owns elsewhere: the optimizer and LR scheduler
(handed to DeepSpeed as client objects), the accumulation window (DeepSpeed runs
with `managed_gradient_accumulation: false`, so each `step()` is a boundary),
the loss normalisation and the checkpoint directory. DeepSpeed owns the
partitioning of optimizer state, gradients and (stage 3) parameters, gradient
clipping and mixed precision, and writes its sharded state into
`checkpoint-<step>/deepspeed/` on every rank - so a multi-node run needs a
checkpoint volume every node can write (ReadWriteMany).

On a CPU-only host DeepSpeed runs with its CPU accelerator and gloo; the first
run JIT-builds a small shared-memory op (cached in ~/.cache/torch_extensions).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from finetune_runtime import contract
from finetune_runtime.errors import CheckpointError, LaunchError
from finetune_runtime.train.backends.base import BackendOptions
from finetune_runtime.train.backends.dist import DistCollectives, distributed_env

if TYPE_CHECKING:
    from finetune_runtime.config import FineTuneConfig

log = logging.getLogger(__name__)

DS_TAG = "deepspeed"  # checkpoint-<step>/deepspeed/ holds DeepSpeed's files
TRAINABLE_MANIFEST = "deepspeed_trainable.json"
CPU_ADAM_ENV = contract.ENV_DS_CPU_ADAM  # 1: use DeepSpeedCPUAdam under optimizer offload


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def single_process_env(env: Mapping[str, str]) -> dict[str, str]:
    """torch.distributed variables for a run started without torchrun (world size 1)."""
    missing = {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
    }
    out = {k: v for k, v in missing.items() if not env.get(k)}
    if not env.get("MASTER_PORT"):
        out["MASTER_PORT"] = str(_free_port())
    return out


def use_cpu_adam(env: Mapping[str, str]) -> bool:
    """DeepSpeedCPUAdam is much faster than torch's AdamW on offloaded states, but its
    first use compiles a C++ op (about a minute); worth it by default on GPU nodes only."""
    raw = env.get(CPU_ADAM_ENV, "").strip().lower()
    if raw:
        return raw in ("1", "true", "yes", "on")
    return torch.cuda.is_available()


class DeepSpeedBackend(DistCollectives):
    """One process of a DeepSpeed data-parallel gang (started by torchrun)."""

    def __init__(
        self,
        config: FineTuneConfig,
        options: BackendOptions,
        env: Mapping[str, str] | None = None,
        base_dir: str | Path | None = None,
    ) -> None:
        env = dict(os.environ if env is None else env)
        self.config = config
        self.options = options
        self.base_dir = base_dir
        self._env = env
        cuda = torch.cuda.is_available()
        if not cuda:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        if not env.get("WORLD_SIZE"):
            extra = single_process_env(env)
            os.environ.update(extra)
            env.update(extra)
        self.rank, self.local_rank, self.world_size = distributed_env(env)
        self.is_main = self.rank == 0
        if cuda:
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        import deepspeed
        import torch.distributed as dist

        if not dist.is_initialized():
            try:
                deepspeed.init_distributed(
                    dist_backend="nccl" if cuda else "gloo",
                    auto_mpi_discovery=False,
                    verbose=False,
                )
            except (RuntimeError, ValueError) as exc:
                raise LaunchError(
                    f"DeepSpeed cannot join the process group (rank {self.rank}/"
                    f"{self.world_size}): {exc}; check MASTER_ADDR/MASTER_PORT and that every "
                    "rank started"
                ) from exc
        self.engine: Any = None
        self.ds_config: dict[str, Any] | None = None
        self._trainable: dict[str, list[int]] = {}

    # -- setup --------------------------------------------------------------

    def prepare(self, model: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        import deepspeed

        from finetune_runtime.train.backends.deepspeed_config import (
            build,
            offloads_optimizer,
            precision_of,
            zero_stage,
        )

        hidden = getattr(getattr(model, "config", None), "hidden_size", None)
        self.ds_config = build(
            self.config,
            self.world_size,
            precision=self.options.precision,
            hidden_size=hidden if isinstance(hidden, int) else None,
            base_dir=self.base_dir,
        )
        # The DeepSpeed JSON may choose bf16/fp16 where the config said "auto": report that.
        self.options = dataclasses.replace(self.options, precision=precision_of(self.ds_config))
        if offloads_optimizer(self.ds_config) and use_cpu_adam(self._env):
            optimizer = to_cpu_adam(optimizer, scheduler)
        self._trainable = {
            name: list(p.shape) for name, p in model.named_parameters() if p.requires_grad
        }
        engine, ds_optimizer, _, ds_scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=self.ds_config,
            dist_init_required=False,
        )
        self.engine = engine
        if self.is_main:
            log.info(
                "DeepSpeed ZeRO stage %d on %d process(es), %s, optimizer %s",
                zero_stage(self.ds_config),
                self.world_size,
                self.precision,
                type(getattr(engine, "basic_optimizer", optimizer)).__name__,
            )
        return engine, ds_optimizer, ds_scheduler

    @property
    def precision(self) -> str:
        from finetune_runtime.train.backends.deepspeed_config import precision_of

        return precision_of(self.ds_config or {})

    @property
    def _engine(self) -> Any:
        if self.engine is None:
            raise RuntimeError("backend.prepare() has not been called")
        return self.engine

    def unwrap(self) -> Any:
        return self._engine.module

    @property
    def _excludes_frozen(self) -> bool:
        return any(not p.requires_grad for p in self._engine.module.parameters())

    # -- stepping -------------------------------------------------------------

    def accumulate(self, boundary: bool) -> contextlib.AbstractContextManager[None]:
        # DeepSpeed decides when gradients are reduced (ZeRO-2/3 per bucket as backward
        # runs); with unmanaged accumulation the boundary is the step() call itself.
        return contextlib.nullcontext()

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        # bf16/fp16 in DeepSpeed means the module itself runs in that dtype.
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        # The loop's losses sum to the window objective; DeepSpeed averages gradients over
        # data-parallel ranks, so multiply by the world size (as DDPBackend does) and keep
        # DeepSpeed from also dividing by its accumulation steps.
        self._engine.backward(loss * self.world_size, scale_wrt_gas=False)

    def step(self) -> float | None:
        engine = self._engine
        engine.step()
        norm = engine.get_global_grad_norm()
        if norm is None:
            return None
        return float(norm.item() if isinstance(norm, torch.Tensor) else norm)

    # -- checkpoints ------------------------------------------------------------

    def save(self, ckpt_dir: Path, client_state: dict[str, Any]) -> None:
        ckpt_dir = Path(ckpt_dir)
        self._engine.save_checkpoint(
            str(ckpt_dir),
            tag=DS_TAG,
            client_state=client_state,
            save_latest=False,
            # LoRA: the frozen base model is not training state; reload it from the base.
            exclude_frozen_parameters=self._excludes_frozen,
        )
        if self.is_main:
            manifest = {"trainable": self._trainable, "world_size": self.world_size}
            (ckpt_dir / TRAINABLE_MANIFEST).write_text(json.dumps(manifest, sort_keys=True))
        self.barrier()

    def load(self, ckpt_dir: Path) -> dict[str, Any]:
        ckpt_dir = Path(ckpt_dir)
        self._check_manifest(ckpt_dir)
        try:
            path, client_state = self._engine.load_checkpoint(
                str(ckpt_dir),
                tag=DS_TAG,
                load_module_strict=not self._excludes_frozen,
                load_optimizer_states=True,
                load_lr_scheduler_states=True,
            )
        except (RuntimeError, ValueError, KeyError, AssertionError, OSError) as exc:
            raise CheckpointError(
                f"{ckpt_dir}: DeepSpeed cannot restore its state: {exc}. The ZeRO stage and "
                "world size must match the run that wrote it"
            ) from exc
        if path is None:
            raise CheckpointError(
                f"{ckpt_dir}: no DeepSpeed checkpoint in {ckpt_dir / DS_TAG}; was it written "
                "without deepspeed? Resume with the same deepspeed setting or a new output_dir"
            )
        return dict(client_state or {})

    def _check_manifest(self, ckpt_dir: Path) -> None:
        path = ckpt_dir / TRAINABLE_MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(
                f"{ckpt_dir}: not a DeepSpeed checkpoint ({TRAINABLE_MANIFEST} is missing); "
                "resume with the deepspeed setting it was written with, or use a new output_dir"
            ) from None
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: unreadable: {exc}") from exc
        saved = {k: list(v) for k, v in manifest.get("trainable", {}).items()}
        if saved != self._trainable:
            missing = sorted(set(self._trainable) - set(saved))[:3]
            extra = sorted(set(saved) - set(self._trainable))[:3]
            reshaped = sorted(
                k for k in set(saved) & set(self._trainable) if saved[k] != self._trainable[k]
            )[:3]
            raise CheckpointError(
                f"{ckpt_dir}: trainable weights do not match this model (missing {missing}, "
                f"unexpected {extra}, reshaped {reshaped}); was it written with a different "
                "adapter or base model? Point resume_from_checkpoint elsewhere or use a new "
                "output_dir"
            )
        saved_world = manifest.get("world_size")
        if saved_world != self.world_size:
            from finetune_runtime.train.backends.deepspeed_config import zero_stage

            # ZeRO shards optimizer state per rank: a different world size cannot load it.
            if zero_stage(self.ds_config or {}) > 0:
                raise CheckpointError(
                    f"{ckpt_dir}: written by {saved_world} processes, resuming with "
                    f"{self.world_size}: ZeRO state is sharded per rank, so resume with the same "
                    "nodes x nproc-per-node (or convert it with DeepSpeed's universal checkpoint "
                    "tools)"
                )

    def export_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full weights on rank 0. ZeRO-3 gathers the partitions layer by layer (the same
        engine method Hugging Face accelerate uses); every rank must call this."""
        engine = self._engine
        if engine.zero_optimization_partition_weights():
            state = engine._zero3_consolidated_16bit_state_dict()
            return dict(state) if state is not None else None
        return dict(engine.module.state_dict())


def to_cpu_adam(optimizer: Any, scheduler: Any) -> Any:
    """Replace a torch Adam/AdamW by DeepSpeedCPUAdam with the same parameter groups and
    hyper-parameters, re-pointing the LR scheduler at it. Other optimizers are kept."""
    if type(optimizer) not in (torch.optim.AdamW, torch.optim.Adam):
        return optimizer
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        groups = [dict(group) for group in optimizer.param_groups]
        first = groups[0]
        replacement = DeepSpeedCPUAdam(
            groups,
            lr=first["lr"],
            betas=first["betas"],
            eps=first["eps"],
            weight_decay=first["weight_decay"],
            adamw_mode=isinstance(optimizer, torch.optim.AdamW),
        )
    except Exception as exc:  # noqa: BLE001 - a missing compiler must not stop training
        log.warning("DeepSpeedCPUAdam unavailable (%s); keeping %s", exc, type(optimizer).__name__)
        return optimizer
    if scheduler is not None and getattr(scheduler, "optimizer", None) is optimizer:
        scheduler.optimizer = replacement
    return replacement
