"""The `training` section: optimisation, schedule, checkpoints, evaluation, sequences.

Every field set by a flat axolotl key of another name carries an `Axolotl` marker; the
axolotl normaliser reads its key map from them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from finetune_runtime.config.base import (
    Axolotl,
    Kernels,
    OptimizerType,
    PositiveInt,
    Precision,
    SchedulerType,
    Section,
)

OptionalPositive = PositiveInt | None


class TrainingSettings(Section):
    """Optimisation, schedule, checkpoints, evaluation and sequence handling."""

    epochs: Annotated[float, Axolotl("num_epochs")] = Field(
        1.0,
        gt=0,
        description="Passes over the training set (may be fractional); default 1. "
        "axolotl: num_epochs.",
    )
    max_steps: Annotated[OptionalPositive, Axolotl("max_steps")] = Field(
        None,
        description="Stop after this many optimizer steps (overrides epochs); default none. "
        "axolotl: max_steps (0 means unset).",
    )
    batch_size: Annotated[PositiveInt, Axolotl("micro_batch_size")] = Field(
        1,
        description="Micro-batch size: examples (or packed rows) per device per forward "
        "pass; default 1. axolotl: micro_batch_size.",
    )
    eval_batch_size: Annotated[OptionalPositive, Axolotl("eval_batch_size")] = Field(
        None, description="Micro-batch size for evaluation; default batch_size."
    )
    gradient_accumulation_steps: Annotated[PositiveInt, Axolotl("gradient_accumulation_steps")] = (
        Field(
            1,
            description="Micro-batches per optimizer step; default 1. Effective batch = "
            "batch_size x this x number of processes.",
        )
    )
    learning_rate: Annotated[float, Axolotl("learning_rate")] = Field(
        2e-4, gt=0, description="Peak learning rate (after warmup); default 2e-4."
    )
    scheduler: SchedulerType = Field(
        "cosine",
        description="Learning-rate schedule after warmup; default cosine. axolotl: lr_scheduler.",
    )
    warmup_steps: Annotated[int, Axolotl("warmup_steps")] = Field(
        0,
        ge=0,
        description="Linear warmup length in optimizer steps; default 0. Set this or "
        "warmup_ratio, not both (axolotl's fractional warmup_steps means warmup_ratio).",
    )
    warmup_ratio: Annotated[float, Axolotl("warmup_ratio")] = Field(
        0.0,
        ge=0,
        lt=1,
        description="Warmup as a fraction of the total optimizer steps, in [0, 1); default 0.",
    )
    weight_decay: Annotated[float, Axolotl("weight_decay")] = Field(
        0.0, ge=0, description="Decoupled (AdamW) weight decay; default 0."
    )
    optimizer: OptimizerType = Field(
        "adamw_torch",
        description="Optimizer; default adamw_torch. The 8-bit and paged ones need "
        "bitsandbytes. axolotl: optimizer (adamw_hf and adamw mean adamw_torch, adamw_8bit "
        "means adamw_bnb_8bit).",
    )
    adam_beta1: Annotated[float, Axolotl("adam_beta1")] = Field(
        0.9, ge=0, lt=1, description="Adam beta1 (first-moment decay), in [0, 1); default 0.9."
    )
    adam_beta2: Annotated[float, Axolotl("adam_beta2")] = Field(
        0.999,
        ge=0,
        lt=1,
        description="Adam beta2 (second-moment decay), in [0, 1); default 0.999.",
    )
    adam_epsilon: Annotated[float, Axolotl("adam_epsilon")] = Field(
        1e-8, gt=0, description="Adam epsilon (added to the denominator); default 1e-8."
    )
    max_grad_norm: Annotated[float | None, Axolotl("max_grad_norm")] = Field(
        1.0, ge=0, description="Gradient clipping norm; default 1.0; null disables clipping."
    )
    save_steps: Annotated[OptionalPositive, Axolotl("save_steps")] = Field(
        None,
        description="Checkpoint every N optimizer steps (or saves_per_epoch, not both); a "
        "final checkpoint is always written. axolotl: save_steps (0 means unset).",
    )
    saves_per_epoch: Annotated[OptionalPositive, Axolotl("saves_per_epoch")] = Field(
        None, description="Checkpoints per epoch (or save_steps, not both); default none."
    )
    save_total_limit: Annotated[OptionalPositive, Axolotl("save_total_limit")] = Field(
        None,
        description="Keep only the newest N complete checkpoints in output_dir; default: keep all.",
    )
    logging_steps: Annotated[PositiveInt, Axolotl("logging_steps")] = Field(
        10,
        description="Log loss, learning rate, grad norm and tokens/s every N optimizer "
        "steps; default 10.",
    )
    eval_steps: Annotated[OptionalPositive, Axolotl("eval_steps")] = Field(
        None,
        description="Evaluate on the validation split every N optimizer steps (or "
        "evals_per_epoch, not both); default none.",
    )
    evals_per_epoch: Annotated[OptionalPositive, Axolotl("evals_per_epoch")] = Field(
        None, description="Evaluations on the validation split per epoch; default none."
    )
    gradient_checkpointing: Annotated[bool, Axolotl("gradient_checkpointing")] = Field(
        False,
        description="Recompute activations in the backward pass to save memory (slower); "
        "default false.",
    )
    sequence_len: Annotated[int, Axolotl("sequence_len")] = Field(
        2048,
        ge=16,
        description="Maximum tokens per example (longer ones are truncated) and, with "
        "sample_packing, the length of a packed row; at least 16, default 2048.",
    )
    sample_packing: Annotated[bool, Axolotl("sample_packing")] = Field(
        False,
        description="Pack several examples into each row of sequence_len tokens; packed "
        "examples never attend to each other. Default false.",
    )
    train_on_inputs: Annotated[bool, Axolotl("train_on_inputs")] = Field(
        False,
        description="False (default): prompt tokens are masked out of the loss and only "
        "responses (assistant turns) are trained; true: prompts are trained too.",
    )
    precision: Precision = Field(
        "auto",
        description="auto: bf16 on CUDA with bf16 and on CPUs with AMX/AVX512-BF16, fp16 on "
        "older GPUs, else fp32. axolotl: bf16 / fp16.",
    )
    kernels: Kernels = Field(
        "auto",
        description="Loss/LM-head kernels. torch: the LM head and cross-entropy run in chunks "
        "at labelled positions only (no full logits); liger: liger-kernel's fused linear "
        "cross-entropy, RMSNorm, RoPE and SwiGLU (CUDA only); none: the model's own forward; "
        "auto: liger on CUDA when installed, else torch.",
    )
    resume_from_checkpoint: Annotated[str | None, Axolotl("resume_from_checkpoint")] = Field(
        None, description="A checkpoint directory; by default the newest one in output_dir."
    )
    auto_resume: Annotated[bool, Axolotl("auto_resume_from_checkpoints")] = Field(
        True,
        description="Resume from the newest complete checkpoint in output_dir when there is "
        "one (how a restarted FineTuneJob gang continues); default true. "
        "axolotl: auto_resume_from_checkpoints.",
    )
