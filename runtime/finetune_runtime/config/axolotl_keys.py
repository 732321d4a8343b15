"""Which axolotl-style keys a flat config may hold, and what happens to the rest.

A key is *known* when the canonical schema has it (derived from the pydantic models,
so a field added there is accepted here with no edit) or when
`finetune_runtime.config.axolotl` translates it. A key in `IGNORED_KEYS` is one we knowingly
ignore: accepted, and named in a warning. Any other key is an error with a
did-you-mean, whatever its value; an empty one (`key:` with no value) has no effect and
only warns.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

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
        "unsloth_cross_entropy_loss",
        "unsloth_lora_mlp",
        "unsloth_lora_qkv",
        "unsloth_lora_o",
        "liger_rope",
        "liger_rms_norm",
        "liger_glu_activation",
        "liger_layer_norm",
        "liger_fused_linear_cross_entropy",
        "plugins",
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
        "dataset_prepared_path",
        "dataset_processes",
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
        "tokens",
        "lora_on_cpu",
        "gptq",
        "use_wandb",
        # Experiment tracking: real config keys once #16 lands (a schema field wins over
        # this list, so nothing here needs to change then).
        "use_tensorboard",
        "use_mlflow",
        "wandb_project",
        "wandb_entity",
        "wandb_name",
        "wandb_run_id",
        "wandb_watch",
        "wandb_log_model",
        "wandb_mode",
        "mlflow_tracking_uri",
        "mlflow_experiment_name",
        "mlflow_run_name",
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
