"""The training config schema: one place, shared by the CLI, the trainer and the operator.

A config is written either in the canonical nested form or as an axolotl-style flat
config (`lora_r`, `micro_batch_size`, `datasets[].type`, ...), which
`finetune_runtime.config.axolotl` normalises to the canonical form first. Errors always
name the key the user actually wrote and its line.

This package needs only pydantic and PyYAML: the operator imports it to validate
FineTuneJob resources and to generate the CRD schema. Its modules, by concern:

- `base`: choice types, constants, the section base class and the axolotl-name marker;
- `adapter`, `dataset`, `training`, `tracking`, `finetune`: the models, one per section;
- `rules`: checks that involve several fields (or read a field's text closely);
- `translate`: pydantic errors as `ConfigIssue`s at the user's key;
- `loader`: file / YAML / mapping -> `FineTuneConfig` or one `ConfigError`;
- `axolotl*`, `yamlsafe`, `presets`: the flat form, safe YAML with lines, `finetune init`.
"""

from __future__ import annotations

from finetune_runtime.config.adapter import LoraSettings, QuantizationSettings
from finetune_runtime.config.base import (
    ADAPTERS_USING_LORA_CONFIG,
    DEEPSPEED_PRESETS,
    PROMPT_LEARNING_ADAPTERS,
    SPECIAL_TOKEN_KEYS,
    AdapterType,
    DatasetFormat,
    Kernels,
    OptimizerType,
    PositiveInt,
    Precision,
    SchedulerType,
    check_safe_path,
    unmergeable_reason,
)
from finetune_runtime.config.dataset import (
    CUSTOM_PLACEHOLDERS,
    DatasetSettings,
    Splits,
    prompt_template_problem,
)
from finetune_runtime.config.finetune import FineTuneConfig
from finetune_runtime.config.loader import load_config, parse_config, parse_config_with_warnings
from finetune_runtime.config.rules import Rule, cross_field_rules
from finetune_runtime.config.tracking import MlflowSettings, TrackingSettings, WandbSettings
from finetune_runtime.config.training import TrainingSettings

__all__ = [
    "ADAPTERS_USING_LORA_CONFIG",
    "CUSTOM_PLACEHOLDERS",
    "DEEPSPEED_PRESETS",
    "PROMPT_LEARNING_ADAPTERS",
    "SPECIAL_TOKEN_KEYS",
    "AdapterType",
    "DatasetFormat",
    "DatasetSettings",
    "FineTuneConfig",
    "Kernels",
    "LoraSettings",
    "MlflowSettings",
    "OptimizerType",
    "PositiveInt",
    "Precision",
    "QuantizationSettings",
    "Rule",
    "SchedulerType",
    "Splits",
    "TrackingSettings",
    "TrainingSettings",
    "WandbSettings",
    "check_safe_path",
    "cross_field_rules",
    "load_config",
    "parse_config",
    "parse_config_with_warnings",
    "prompt_template_problem",
    "unmergeable_reason",
]
