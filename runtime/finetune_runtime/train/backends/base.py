"""The seam between the training loop and how a step is executed.

The loop (`finetune_runtime.train.loop`) is written once against `Backend`;
a backend decides what "backward", "optimizer step", "checkpoint" and
"all-reduce" mean for one process (`local.LocalBackend`), plain data parallelism
(`local.DDPBackend`, torch.distributed: gloo on CPU, nccl on CUDA) or DeepSpeed ZeRO
(`deepspeed.DeepSpeedBackend`). `factory.create_backend` picks one; this module
holds only the seam, so every backend imports it and it imports none of them.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from finetune_runtime.train.hardware import ResolvedPrecision


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
