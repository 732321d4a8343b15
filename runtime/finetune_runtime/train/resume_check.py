"""Resume only with the config that wrote the checkpoint (unless asked otherwise).

A checkpoint records the config that produced it (`config.yaml`). Resuming with a
config that differs in anything that changes the trained weights (learning rate,
seed, schedule, data, adapter, ...) would silently mix two runs while the new
checkpoints claim the new settings, so it is refused, listing every differing key,
unless the user passes `--resume-with-changes`. Settings that only change
bookkeeping (where and how often to save, log or evaluate) may differ freely.
"""

from __future__ import annotations

from typing import Any

# Keys (by their last component, or a prefix of it) that do not change the trained result.
NEUTRAL_KEYS = frozenset(
    {
        "output_dir",
        "resume_from_checkpoint",
        "auto_resume",
        "logging_steps",
        "save_steps",
        "saves_per_epoch",
        "save_total_limit",
        "eval_steps",
        "evals_per_epoch",
        "eval_batch_size",
        "dataset_prepared_path",
        "dataset_processes",
        "use_tensorboard",
    }
)
NEUTRAL_PREFIXES = ("wandb", "mlflow", "tracking", "logging")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{'training': {'learning_rate': 1}} -> {'training.learning_rate': 1} (lists by index)."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(data, list) and data and all(isinstance(x, dict) for x in data):
        out = {}
        for i, value in enumerate(data):
            out.update(flatten(value, f"{prefix}[{i}]"))
        return out
    return {prefix: data}


def _neutral(key: str) -> bool:
    parts = [p.split("[")[0] for p in key.split(".")]
    return any(p in NEUTRAL_KEYS or p.startswith(NEUTRAL_PREFIXES) for p in parts)


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key: old → new' for every result-changing difference (pure)."""
    old, new = flatten(saved), flatten(current)
    missing = object()
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if a == b or _neutral(key):
            continue
        shown_a = "(unset)" if a is missing else repr(a)
        shown_b = "(unset)" if b is missing else repr(b)
        changes.append(f"{key}: {shown_a} → {shown_b}")
    return changes
