"""From `config.deepspeed` to the JSON dict handed to `deepspeed.initialize` (pure).

`config.deepspeed` is a preset name, a path to a DeepSpeed JSON file (axolotl's
`deepspeed_configs/*.json` shape, with "auto" values), or an inline dict. Whatever
the source, the values DeepSpeed shares with the training config are derived from
it, so the two can never disagree silently:

    train_micro_batch_size_per_gpu = training.batch_size
    gradient_accumulation_steps    = training.gradient_accumulation_steps
    train_batch_size               = micro x accumulation x world size
    gradient_clipping              = training.max_grad_norm (0 = off)
    bf16.enabled / fp16.enabled    = the resolved precision

"auto" (or leaving a key out) takes the derived value; an explicit value that
differs is a ConfigError naming both places. The optimizer and LR scheduler
belong to the training loop (DeepSpeed gets them as client objects), so a JSON
`optimizer`/`scheduler` section is dropped with a warning when it only holds
"auto" values and rejected when it sets anything explicitly. Gradient
accumulation is driven by the loop too (`managed_gradient_accumulation: false`:
every `engine.step()` is a boundary), so a short final window at the end of an
epoch needs no special case.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from finetune_runtime.config import DEEPSPEED_PRESETS, FineTuneConfig
from finetune_runtime.errors import ConfigError, ConfigIssue

log = logging.getLogger(__name__)

AUTO = "auto"
MAX_JSON_BYTES = 1_000_000

_OVERLAP = {"overlap_comm": True, "contiguous_gradients": True, "reduce_bucket_size": AUTO}
_ZERO3 = {
    **_OVERLAP,
    "stage": 3,
    "stage3_prefetch_bucket_size": AUTO,
    "stage3_param_persistence_threshold": AUTO,
    # Needed by save_16bit_model; the loop gathers weights itself, but keep DeepSpeed's
    # own tools (and users' habits) working.
    "stage3_gather_16bit_weights_on_model_save": True,
}

# Presets: only what differs between them. Everything derived is filled by build().
PRESETS: dict[str, dict[str, Any]] = {
    "zero1": {"zero_optimization": {"stage": 1}},
    "zero2": {"zero_optimization": {**_OVERLAP, "stage": 2}},
    "zero3": {"zero_optimization": dict(_ZERO3)},
    "zero2_offload": {
        "zero_optimization": {**_OVERLAP, "stage": 2, "offload_optimizer": {"device": "cpu"}},
    },
    "zero3_offload": {
        "zero_optimization": {
            **_ZERO3,
            "offload_optimizer": {"device": "cpu"},
            "offload_param": {"device": "cpu"},
        }
    },
}
assert set(PRESETS) == set(DEEPSPEED_PRESETS)

# Size-dependent ZeRO knobs: "auto" -> computed from the model's hidden size (the same
# formulas Hugging Face's integration uses); without a hidden size DeepSpeed's defaults apply.
_HIDDEN_SIZE_AUTO = {
    "reduce_bucket_size": lambda h: h * h,
    "stage3_prefetch_bucket_size": lambda h: int(0.9 * h * h),
    "stage3_param_persistence_threshold": lambda h: 10 * h,
}


def _error(field: str | None, message: str, source: str) -> ConfigError:
    return ConfigError([ConfigIssue(field, message)], source)


def load_source(
    value: str | Mapping[str, Any], base_dir: str | Path | None = None
) -> tuple[dict[str, Any], str]:
    """The user's DeepSpeed settings as a dict, and a name for error messages."""
    if isinstance(value, Mapping):
        return copy.deepcopy(dict(value)), "deepspeed (inline)"
    if value in PRESETS:
        return copy.deepcopy(PRESETS[value]), f"deepspeed preset {value!r}"
    path = Path(value)
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise _error(
                "deepspeed", f"{size} bytes is too large for a DeepSpeed config", str(path)
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _error(
            "deepspeed",
            f"DeepSpeed config file not found: {path} (give a preset: "
            f"{', '.join(DEEPSPEED_PRESETS)}, or an existing .json path)",
            str(path),
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _error("deepspeed", f"cannot read DeepSpeed config {path}: {exc}", str(path)) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [ConfigIssue(None, f"not valid JSON: {exc.msg} (column {exc.colno})", exc.lineno)],
            str(path),
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"a DeepSpeed config must be a JSON object, not {type(data).__name__}", str(path)
        )
    return data, str(path)


def resolved_precision(config: FineTuneConfig, precision: str | None) -> str:
    """`precision` from the caller (what the trainer resolved 'auto' to) or the config's."""
    value = precision or config.training.precision
    return "fp32" if value == "auto" else value


def build(
    config: FineTuneConfig,
    world_size: int,
    *,
    precision: str | None = None,
    hidden_size: int | None = None,
    base_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The DeepSpeed config dict for `config` on `world_size` processes.

    `precision`: the trainer's resolved precision (fp32/bf16/fp16) when the config says
    "auto". `hidden_size`: the model's, for size-dependent ZeRO-3 "auto" values.
    `base_dir`: where a relative JSON path is looked up (the config file's directory).
    Raises ConfigError naming the DeepSpeed source and key on any inconsistency.
    """
    if config.deepspeed is None:
        raise _error("deepspeed", "no DeepSpeed config set", "<config>")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    ds, source = load_source(config.deepspeed, base_dir)
    issues = _settle_shared(ds, config, world_size)
    issues.extend(_settle_precision(ds, config, precision))
    _settle_zero(ds, hidden_size)
    issues.extend(_drop_client_owned(ds, source))
    issues.extend(_settle_loop_owned(ds))
    for path in _find_auto(ds):
        issues.append(
            ConfigIssue(path, '"auto" has no value to resolve to here: give an explicit value')
        )
    if issues:
        raise ConfigError(issues, source)
    return ds


def _settle_shared(
    ds: dict[str, Any], config: FineTuneConfig, world_size: int
) -> list[ConfigIssue]:
    """Batch sizes, accumulation and clipping from the training config; an explicit
    value that differs is an issue naming both places."""
    training = config.training
    issues: list[ConfigIssue] = []

    def settle(key: str, derived: Any, origin: str) -> None:
        current = ds.get(key, AUTO)
        if current == AUTO or current is None:
            ds[key] = derived
        elif _number_differs(current, derived):
            issues.append(
                ConfigIssue(
                    key,
                    f'is {current!r} but {origin} gives {derived!r}: use "auto" (or remove '
                    "the key) so it follows the training config, or change one of them",
                )
            )

    micro, accum = training.batch_size, training.gradient_accumulation_steps
    settle("train_micro_batch_size_per_gpu", micro, "training.batch_size")
    settle("gradient_accumulation_steps", accum, "training.gradient_accumulation_steps")
    settle(
        "train_batch_size",
        micro * accum * world_size,
        f"training.batch_size x gradient_accumulation_steps x world size ({world_size})",
    )
    settle("gradient_clipping", float(training.max_grad_norm or 0.0), "training.max_grad_norm")
    return issues


def _settle_loop_owned(ds: dict[str, Any]) -> list[ConfigIssue]:
    """What the training loop decides (step boundaries, logging) and DeepSpeed must not."""
    issues = []
    managed = ds.get("managed_gradient_accumulation", False)
    if managed not in (False, AUTO):
        issues.append(
            ConfigIssue(
                "managed_gradient_accumulation",
                "must be false: the training loop decides when an optimizer step happens",
            )
        )
    ds["managed_gradient_accumulation"] = False
    # Client optimizers (bitsandbytes 8-bit, Adafactor, ...) are not on DeepSpeed's tested list.
    ds.setdefault("zero_allow_untested_optimizer", True)
    _settle_offload_optimizer(ds)
    ds.setdefault("steps_per_print", 2**31 - 1)  # the loop logs; keep DeepSpeed quiet
    ds.setdefault("wall_clock_breakdown", False)
    return issues


def _number_differs(current: Any, derived: Any) -> bool:
    if isinstance(current, bool) or not isinstance(current, int | float):
        return True
    return abs(float(current) - float(derived)) > 1e-9


def _settle_precision(
    ds: dict[str, Any], config: FineTuneConfig, precision: str | None
) -> list[ConfigIssue]:
    """bf16/fp16 'enabled' from the precision; explicit JSON choices win only over 'auto'."""
    issues: list[ConfigIssue] = []
    wanted = resolved_precision(config, precision)
    explicit_in_config = config.training.precision != "auto"
    sections = {name: ds.get(name) for name in ("bf16", "fp16")}
    for name, section in sections.items():
        if section is None:
            ds[name] = {"enabled": wanted == name}
            continue
        if not isinstance(section, dict):
            issues.append(ConfigIssue(name, 'must be an object like {"enabled": "auto"}'))
            continue
        enabled = section.get("enabled", AUTO)
        if enabled == AUTO:
            section["enabled"] = wanted == name
        elif not isinstance(enabled, bool):
            issues.append(ConfigIssue(f"{name}.enabled", 'must be true, false or "auto"'))
        elif explicit_in_config and enabled != (wanted == name):
            issues.append(
                ConfigIssue(
                    f"{name}.enabled",
                    f"is {str(enabled).lower()} but training.precision is "
                    f'{config.training.precision!r}: set it to "auto" or change the precision',
                )
            )
    if not issues and ds["bf16"].get("enabled") and ds["fp16"].get("enabled"):
        issues.append(ConfigIssue("fp16.enabled", "bf16 and fp16 cannot both be enabled"))
    return issues


def precision_of(ds: Mapping[str, Any]) -> Literal["fp32", "bf16", "fp16"]:
    """The precision a built DeepSpeed config trains in: bf16, fp16 or fp32."""
    for name in ("bf16", "fp16"):
        section = ds.get(name)
        if isinstance(section, Mapping) and section.get("enabled") is True:
            return "bf16" if name == "bf16" else "fp16"
    return "fp32"


def zero_stage(ds: Mapping[str, Any]) -> int:
    zero = ds.get("zero_optimization")
    return int(zero.get("stage", 0)) if isinstance(zero, Mapping) else 0


def offloads_optimizer(ds: Mapping[str, Any]) -> bool:
    zero = ds.get("zero_optimization")
    if not isinstance(zero, Mapping):
        return False
    offload = zero.get("offload_optimizer")
    return isinstance(offload, Mapping) and offload.get("device") in ("cpu", "nvme")


def _settle_zero(ds: dict[str, Any], hidden_size: int | None) -> None:
    zero = ds.get("zero_optimization")
    if not isinstance(zero, dict):
        return
    for key, formula in _HIDDEN_SIZE_AUTO.items():
        if zero.get(key) == AUTO:
            if hidden_size:
                zero[key] = formula(hidden_size)
            else:
                del zero[key]  # DeepSpeed's own default


def _settle_offload_optimizer(ds: dict[str, Any]) -> None:
    # The loop's optimizer runs on the offloaded (CPU) fp32 master weights. DeepSpeed refuses
    # a non-DeepSpeedCPUAdam client optimizer there unless told the choice is deliberate;
    # the backend swaps AdamW for DeepSpeedCPUAdam when that op can be built.
    if offloads_optimizer(ds):
        ds.setdefault("zero_force_ds_cpu_optimizer", False)


def _drop_client_owned(ds: dict[str, Any], source: str) -> list[ConfigIssue]:
    issues = []
    owner = {
        "optimizer": "training.optimizer / learning_rate / adam_*",
        "scheduler": ("training.scheduler / warmup_steps / warmup_ratio"),
    }
    for key, replacement in owner.items():
        section = ds.get(key)
        if section is None:
            continue
        params = section.get("params", {}) if isinstance(section, dict) else None
        if isinstance(params, dict) and all(v == AUTO for v in params.values()):
            log.warning(
                "%s: ignoring DeepSpeed's %r section (type %r): the training loop's %s is used",
                source,
                key,
                section.get("type") if isinstance(section, dict) else None,
                replacement,
            )
            del ds[key]
        else:
            issues.append(
                ConfigIssue(
                    key,
                    f"explicit DeepSpeed {key} settings are not supported: the training loop "
                    f"owns the {key}; set {replacement} in the training config instead and "
                    f'remove this section (or make all its params "auto")',
                )
            )
    return issues


def _find_auto(value: Any, prefix: str = "") -> list[str]:
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _find_auto(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _find_auto(item, f"{prefix}[{i}]")
    elif value == AUTO:
        found.append(prefix)
    return found
