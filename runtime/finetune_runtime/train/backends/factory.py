"""Which backend a run gets, and the options every backend shares.

DeepSpeed's module (and DeepSpeed itself) is imported only when the config asks for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from finetune_runtime.train.backends.base import Backend, BackendOptions
from finetune_runtime.train.backends.dist import distributed_env
from finetune_runtime.train.backends.local import DDPBackend, LocalBackend
from finetune_runtime.train.hardware import (
    ResolvedPrecision,
    cpu_flags,
    cuda_supports_bf16,
    decide_precision,
)

if TYPE_CHECKING:
    from finetune_runtime.config import FineTuneConfig

log = logging.getLogger(__name__)


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
