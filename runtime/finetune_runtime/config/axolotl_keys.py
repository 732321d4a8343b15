"""Which axolotl-style keys a flat config may hold, where each goes, and what happens to
the rest.

A key is *known* when the canonical schema has it (derived from the pydantic models,
so a field added there is accepted here with no edit) or when
`finetune_runtime.config.axolotl` translates it. Where an axolotl key sets a canonical
field, the field says so with an `Axolotl` marker and the maps below are read from those
markers (`SCALAR_MAP`, `DATASET_KEYS`); the scheduler map is the schema's own choices. A
key in `IGNORED_KEYS` is one we knowingly ignore: accepted, and named in a warning. Any
other key is an error with a did-you-mean, whatever its value; an empty one (`key:` with
no value) has no effect and only warns.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any, get_args

from pydantic import BaseModel

from finetune_runtime.config.base import Loc, OptimizerType, SchedulerType, axolotl_key
from finetune_runtime.config.dataset import DatasetSettings
from finetune_runtime.config.finetune import FineTuneConfig

# axolotl top-level keys that steer axolotl's own integrations, hardware tricks or
# bookkeeping, none of which changes what finetune-operator trains. Named in a warning.
IGNORED_KEYS = frozenset(
    {
        # model loading hints we derive ourselves
        "model_type",
        "tokenizer_type",
        "base_model_config",
        "tokenizer_use_fast",
        "tokenizer_legacy",
        "is_llama_derived_model",
        "is_mistral_derived_model",
        "is_qwen_derived_model",
        "trust_remote_code_tokenizer",
        # attention kernels / speed-ups (the runtime picks its own)
        "flash_attention",
        "flash_attn_cross_entropy",
        "flash_attn_rms_norm",
        "flash_attn_fuse_qkv",
        "flash_attn_fuse_mlp",
        "sdp_attention",
        "xformers_attention",
        "s2_attention",
        "flex_attention",
        "attn_implementation",
        "unsloth_cross_entropy_loss",
        "unsloth_lora_mlp",
        "unsloth_lora_qkv",
        "unsloth_lora_o",
        "liger_rope",
        "liger_rms_norm",
        "liger_glu_activation",
        "liger_layer_norm",
        "liger_fused_linear_cross_entropy",
        "torch_compile",
        "torch_compile_backend",
        "tf32",
        "group_by_length",
        "pad_to_sequence_len",
        "eval_sample_packing",
        "sample_packing_eff_est",
        "total_num_tokens",
        # bookkeeping, caches, hub and reporting
        "strict",
        "debug",
        "local_rank",
        # our trainer reshuffles every epoch from the seed, as axolotl's sampler does
        "shuffle_merged_datasets",
        "push_dataset_to_hub",
        "hub_model_id",
        "hub_strategy",
        "hub_private_repo",
        "hf_use_auth_token",
        "push_to_hub",
        "lora_model_dir",
        "early_stopping_patience",
        "eval_table_size",
        "eval_max_new_tokens",
        "eval_causal_lm_metrics",
        "do_causal_lm_eval",
        "profiler_steps",
        "loss_watchdog_threshold",
        "loss_watchdog_patience",
        "save_safetensors",
        "save_strategy",
        "eval_strategy",
        "evaluation_strategy",
        "save_first_step",
        "ddp_timeout",
        "ddp_bucket_cap_mb",
        "ddp_broadcast_buffers",
        "eot_tokens",
        "lora_on_cpu",
        "gptq",
        "use_wandb",
        # experiment-tracking switches and settings the schema does not read (the ones it
        # reads, wandb_project, mlflow_tracking_uri, use_tensorboard, ..., are mapped)
        "use_mlflow",
        "wandb_run_id",
        "wandb_watch",
        "wandb_log_model",
        "comet_api_key",
        "comet_project_name",
    }
)

# axolotl dataset-entry keys we knowingly ignore (named in a warning).
IGNORED_DATASET_KEYS = frozenset(
    {
        "ds_type",
        "shards",
        "preprocess_shards",
        "conversation",
        "drop_system_message",
        "message_field_training",
        "message_field_training_detail",
        "trust_remote_code",
        "train_on_eos",
        "train_on_eot",
        "field_human",
        "field_model",
    }
)


def is_empty(value: Any) -> bool:
    return value is None or value in ("", [], {})


def did_you_mean(key: str, candidates: Iterable[str]) -> str:
    """'; did you mean 'learning_rate'?' or '' when nothing is close."""
    guess = difflib.get_close_matches(key, sorted(set(candidates)), n=1, cutoff=0.75)
    return f"; did you mean {guess[0]!r}?" if guess else ""


def unknown_key_message(key: object, known: Iterable[str], what: str = "key") -> str:
    hint = did_you_mean(str(key), known)
    return f"unknown {what} {key!r}{hint or ''}" + (
        "" if hint else "; see docs/config.md for the supported keys"
    )


# --------------------------------------------------------------------------- key maps

# Keys that mark a config as axolotl-style (canonical configs never use them).
FLAT_MARKERS = frozenset(
    {
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_target_modules",
        "lora_target_linear",
        "load_in_4bit",
        "load_in_8bit",
        "micro_batch_size",
        "num_epochs",
        "lr_scheduler",
        "sequence_len",
        "sample_packing",
        "val_set_size",
        "gradient_accumulation_steps",
        "learning_rate",
        "optimizer",
        "warmup_steps",
        "warmup_ratio",
        "max_steps",
        "save_steps",
        "logging_steps",
        "gradient_checkpointing",
        "resume_from_checkpoint",
        "train_on_inputs",
        "bf16",
        "fp16",
        "tf32",
        "weight_decay",
        "max_grad_norm",
        "eval_steps",
        "evals_per_epoch",
        "saves_per_epoch",
        "save_total_limit",
        "eval_batch_size",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "lora_modules_to_save",
        "peft_use_dora",
        "peft_use_rslora",
        "lora_fan_in_fan_out",
        "auto_resume_from_checkpoints",
        "bnb_config_kwargs",
        "tokenizer_config",
        "base_model_config",
    }
)


def _marked_fields(model: type[BaseModel], prefix: Loc = ()) -> dict[str, Loc]:
    """axolotl key -> canonical location, from the `Axolotl` markers of `model`'s fields and
    of the sections nested in it as plain mappings (not lists, not optional ones)."""
    found: dict[str, Loc] = {}
    for name, field in model.model_fields.items():
        key = axolotl_key(field)
        if key is not None:
            found[key] = prefix + (name,)
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            found.update(_marked_fields(sub, prefix + (name,)))
    return found


# axolotl key -> canonical location (scalars that move as they are), e.g.
# micro_batch_size -> training.batch_size.
SCALAR_MAP: dict[str, Loc] = _marked_fields(FineTuneConfig)

# Top-level keys that keep their name in both forms: every canonical one, and `dataset`.
SHARED_TOP_LEVEL = frozenset(FineTuneConfig.model_fields) | {"dataset"}
# Sections whose keys a flat config may also give nested (`training: {seed: ..}`).
NESTED_SECTIONS = ("lora", "quantization", "training", "tracking")
# Top-level keys the combining functions read from the raw config, not the key loop.
COMBINED_TOP_LEVEL = ("adapter", "datasets", "special_tokens")

OPTIMIZER_ALIASES = {
    "adamw_hf": "adamw_torch",
    "adamw": "adamw_torch",
    "adamw_8bit": "adamw_bnb_8bit",
    "adamw_torch_8bit": "adamw_bnb_8bit",
}
OPTIMIZER_MAP = {name: name for name in get_args(OptimizerType)} | OPTIMIZER_ALIASES
SCHEDULER_MAP = {name: name for name in get_args(SchedulerType)}

# Flat keys translated by the combining functions in `axolotl` (besides SCALAR_MAP and
# the schema's own); `rl` and `fsdp*` are refused or warned about there.
COMBINED_KEYS = frozenset(
    {
        "load_in_4bit",
        "load_in_8bit",
        "bnb_config_kwargs",
        "bf16",
        "fp16",
        "lora_target_linear",
        "peft_use_dora",
        "val_set_size",
        "optimizer",
        "lr_scheduler",
        "rl",
        "fsdp",
        "fsdp_config",
        "pretraining_dataset",
    }
)

# axolotl dataset key -> canonical dataset key (from the markers on DatasetSettings).
DATASET_KEYS: dict[str, str] = {
    key: str(loc[-1]) for key, loc in _marked_fields(DatasetSettings).items()
}
# Dataset keys translated by hand (type/format -> format + prompt_style, ...).
DATASET_TRANSLATED = frozenset({"type", "format", "message_property_mappings", "roles"})


def top_level_fields() -> set[str]:
    """The canonical schema's top-level keys (read from the model: new fields count)."""
    return set(FineTuneConfig.model_fields)


def dataset_fields() -> set[str]:
    """The canonical dataset keys (read from the model: new fields count)."""
    return set(DatasetSettings.model_fields)


def known_flat_keys() -> set[str]:
    return set(SHARED_TOP_LEVEL) | set(SCALAR_MAP) | COMBINED_KEYS | top_level_fields()
