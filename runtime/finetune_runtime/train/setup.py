"""Setting up one run, step by step: tokenizer and data, the step plan, the model
(seeded, with kernels, packing and the adapter), the optimiser and schedule.

The order is part of reproducibility: the seed is set after everything that may draw
randomness unpredictably (building a builtin model on first use) and right before the
random parts (new embeddings, adapter init). `Trainer._setup` calls these in turn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from finetune_runtime.config import FineTuneConfig, TrainingSettings
from finetune_runtime.errors import ConfigError
from finetune_runtime.storage.integrity import architecture_of
from finetune_runtime.train.backends.base import Backend
from finetune_runtime.train.kernels import apply_kernels
from finetune_runtime.train.optim import build_optimizer, build_scheduler
from finetune_runtime.train.options import TrainOptions
from finetune_runtime.train.plan import TrainingPlan, make_plan

if TYPE_CHECKING:
    from finetune_runtime.data.pipeline import DatasetBundle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Data:
    source: str  # where the base model is loaded from (a directory or a hub id)
    tokenizer: Any
    bundle: DatasetBundle
    collate: Any


@dataclass(frozen=True)
class ModelFacts:
    """What the summary and the final weights' manifest say about the model."""

    kernels: str
    base_architecture: dict[str, Any]  # before embeddings grow
    trainable: int
    total_params: int


def load_data(config: FineTuneConfig, backend: Backend, options: TrainOptions) -> Data:
    """Tokenizer, the prepared (cached) datasets and their collator."""
    from finetune_runtime.data import make_collator
    from finetune_runtime.data.prepared import prepared_datasets
    from finetune_runtime.model import load as models

    source = models.resolve_model_source(config.base_model, options.base_dir)
    tokenizer = models.load_tokenizer(config, source, options.base_dir)
    bundle = prepared_datasets(
        config,
        tokenizer,
        base_dir=options.base_dir,
        local_rank=backend.local_rank,
        barrier=backend.barrier,
    )
    return Data(source, tokenizer, bundle, make_collator(tokenizer, config))


def plan_run(
    training: TrainingSettings, backend: Backend, data: Data, options: TrainOptions
) -> TrainingPlan:
    return make_plan(
        training,
        dataset_rows=len(data.bundle.train),
        world_size=backend.world_size,
        max_steps=options.max_steps,
    )


def load_model(
    config: FineTuneConfig, backend: Backend, data: Data, plan: TrainingPlan
) -> tuple[Any, ModelFacts]:
    """The seeded base model with kernels, packing and the adapter applied (not yet
    wrapped by the backend)."""
    from transformers import set_seed

    from finetune_runtime.model import adapters
    from finetune_runtime.model import load as models

    set_seed(config.seed)
    device = backend.device
    model = models.load_base_model(
        config, data.source, device=device, precision=backend.options.precision
    )
    base_architecture = architecture_of(model.config)  # before embeddings grow
    models.fit_embeddings(model, data.tokenizer)
    kernels = apply_kernels(model, config.training.kernels, device.type)
    if config.training.sample_packing:
        from finetune_runtime.train.attention import configure_model_for_packing

        attention = configure_model_for_packing(model, device.type)
        log.info("sample packing: padding-free rows, attention %s", attention)
    model = adapters.apply_adapter(config, model, plan.total_steps)
    trainable, total = adapters.trainable_summary(model)
    return model, ModelFacts(kernels, base_architecture, trainable, total)


def optimiser(training: TrainingSettings, model: Any, plan: TrainingPlan) -> tuple[Any, Any]:
    """(optimizer, LR scheduler) for the unwrapped model."""
    optimizer = build_optimizer(training, model)
    return optimizer, build_scheduler(training, optimizer, plan.total_steps, plan.warmup_steps)


def register_adapter_hook(
    config: FineTuneConfig, backend: Backend, optimizer: Any, step: int
) -> None:
    """Attach the post-step hook some adapters need (AdaLoRA), counting from `step`."""
    from finetune_runtime.model.adapters import adapter_step_hook

    hook = adapter_step_hook(backend.unwrap(), step)
    if hook is None:
        return
    if config.deepspeed:
        raise ConfigError(
            "adapter 'adalora' needs per-parameter gradients after each step, which "
            "DeepSpeed does not expose: use another adapter or remove deepspeed"
        )
    optimizer.register_step_post_hook(hook)


def log_run(
    config: FineTuneConfig,
    backend: Backend,
    plan: TrainingPlan,
    data: DatasetBundle,
    facts: ModelFacts,
) -> None:
    training, stats = config.training, data.stats
    log.info(
        "training %s (%s adapter): %d/%d parameters trainable (%.2f%%); %d train rows, "
        "%d eval rows; %d steps (%d per epoch), effective batch %d, precision %s, "
        "kernels %s, world size %d, device %s",
        config.base_model,
        config.adapter,
        facts.trainable,
        facts.total_params,
        100.0 * facts.trainable / max(1, facts.total_params),
        stats.train_rows,
        stats.eval_rows,
        plan.total_steps,
        plan.steps_per_epoch,
        training.batch_size * training.gradient_accumulation_steps * backend.world_size,
        backend.options.precision,
        facts.kernels,
        backend.world_size,
        backend.device,
    )
