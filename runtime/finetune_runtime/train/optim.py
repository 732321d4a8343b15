"""Optimizers (torch, bitsandbytes, transformers' Adafactor) and LR schedules."""

from __future__ import annotations

import math
from typing import Any

import torch

from finetune_runtime.config import TrainingSettings
from finetune_runtime.errors import ConfigError

WSD_DECAY_FRACTION = 0.1  # warmup_stable_decay: the last 10% of steps decay
COSINE_MIN_LR_RATE = 0.1  # cosine_with_min_lr: decay to 10% of the peak


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters; biases and norm weights (1-D) get no weight decay."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    if not decay and not no_decay:
        raise ConfigError("the model has no trainable parameters: check adapter and lora settings")
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def build_optimizer(training: TrainingSettings, model: torch.nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, training.weight_decay)
    lr = training.learning_rate
    betas = (training.adam_beta1, training.adam_beta2)
    eps = training.adam_epsilon
    name = training.optimizer
    if name in ("adamw_torch", "adamw_torch_fused"):
        return torch.optim.AdamW(
            groups, lr=lr, betas=betas, eps=eps, fused=name == "adamw_torch_fused"
        )
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        # An externally scheduled, fixed-LR Adafactor (what HF Trainer's "adafactor" uses).
        return Adafactor(
            groups, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False
        )
    import bitsandbytes as bnb

    classes = {
        "adamw_bnb_8bit": bnb.optim.AdamW8bit,
        "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
        "paged_adamw_32bit": bnb.optim.PagedAdamW32bit,
    }
    return classes[name](groups, lr=lr, betas=betas, eps=eps)


def build_scheduler(
    training: TrainingSettings, optimizer: torch.optim.Optimizer, total_steps: int, warmup: int
) -> Any:
    from transformers import get_scheduler

    extra: dict[str, Any] = {}
    if training.scheduler == "cosine_with_min_lr":
        extra["min_lr_rate"] = COSINE_MIN_LR_RATE
    elif training.scheduler == "warmup_stable_decay":
        extra["num_decay_steps"] = max(1, math.ceil(total_steps * WSD_DECAY_FRACTION))
    return get_scheduler(
        training.scheduler,
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=total_steps,
        scheduler_specific_kwargs=extra,
    )
