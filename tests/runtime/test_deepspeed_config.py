"""deepspeed_config.build: presets, "auto" resolution, axolotl-shaped JSON files, conflicts.

Built configs are also fed to DeepSpeed's own config parser (`DeepSpeedConfig`), so a
dict DeepSpeed would refuse cannot pass here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from finetune_runtime.config import DEEPSPEED_PRESETS, FineTuneConfig, parse_config
from finetune_runtime.errors import ConfigError
from finetune_runtime.train.backends.deepspeed_config import (
    build,
    offloads_optimizer,
    precision_of,
    zero_stage,
)


def make_config(deepspeed: Any, **training: Any) -> FineTuneConfig:
    data: dict[str, Any] = {
        "base_model": "builtin:tiny-llama",
        "datasets": [{"path": "data.jsonl"}],
        "deepspeed": deepspeed,
        "training": {"batch_size": 2, "gradient_accumulation_steps": 4, **training},
    }
    return parse_config(data)


def deepspeed_accepts(ds: dict[str, Any]) -> None:
    """DeepSpeed's own parser and batch-size sanity checks (world size 1 outside dist)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    parsed = DeepSpeedConfig(json.loads(json.dumps(ds)))
    assert parsed.train_batch_size == ds["train_batch_size"]


# Shaped like axolotl's deepspeed_configs/zero2.json and zero3_bf16_cpuoffload_all.json:
# every batch / clipping / precision value left "auto".
AXOLOTL_ZERO2 = {
    "zero_optimization": {
        "stage": 2,
        "offload_optimizer": {"device": "cpu"},
        "contiguous_gradients": True,
        "overlap_comm": True,
    },
    "bf16": {"enabled": "auto"},
    "fp16": {
        "enabled": "auto",
        "auto_cast": False,
        "loss_scale": 0,
        "initial_scale_power": 32,
        "loss_scale_window": 1000,
        "hysteresis": 2,
        "min_loss_scale": 1,
    },
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "wall_clock_breakdown": False,
}
AXOLOTL_ZERO3_OFFLOAD = {
    "zero_force_ds_cpu_optimizer": False,
    "zero_allow_untested_optimizer": True,
    "zero_optimization": {
        "stage": 3,
        "offload_optimizer": {"device": "cpu", "pin_memory": True},
        "offload_param": {"device": "cpu", "pin_memory": True},
        "overlap_comm": True,
        "contiguous_gradients": True,
        "sub_group_size": 0,
        "reduce_bucket_size": "auto",
        "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto",
        "max_live_parameters": 0,
        "max_reuse_distance": 0,
        "gather_16bit_weights_on_model_save": True,
    },
    "bf16": {"enabled": True},
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "wall_clock_breakdown": False,
}


def write_json(tmp_path: Path, data: Any, name: str = "ds.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, indent=2))
    return path


# --------------------------------------------------------------------------- presets


@pytest.mark.parametrize("preset", DEEPSPEED_PRESETS)
def test_every_preset_resolves_and_deepspeed_accepts_it(preset: str) -> None:
    ds = build(make_config(preset, max_grad_norm=0.5), world_size=1, hidden_size=64)
    assert ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 8
    assert ds["gradient_clipping"] == 0.5
    assert ds["managed_gradient_accumulation"] is False
    assert zero_stage(ds) == int(preset[4])
    assert offloads_optimizer(ds) == preset.endswith("_offload")
    assert '"auto"' not in json.dumps(ds)
    deepspeed_accepts(ds)


def test_train_batch_size_multiplies_by_world_size() -> None:
    ds = build(make_config("zero2"), world_size=16)
    assert ds["train_batch_size"] == 2 * 4 * 16


def test_zero3_size_knobs_follow_the_hidden_size_or_deepspeed_defaults() -> None:
    with_h = build(make_config("zero3"), world_size=2, hidden_size=100)["zero_optimization"]
    assert with_h["reduce_bucket_size"] == 10_000
    assert with_h["stage3_prefetch_bucket_size"] == 9_000
    assert with_h["stage3_param_persistence_threshold"] == 1_000
    assert with_h["stage3_gather_16bit_weights_on_model_save"] is True
    without = build(make_config("zero3"), world_size=2)["zero_optimization"]
    assert "reduce_bucket_size" not in without  # left to DeepSpeed's default
    zero2 = build(make_config("zero2"), world_size=2, hidden_size=64)["zero_optimization"]
    assert zero2["reduce_bucket_size"] == 64 * 64 and zero2["overlap_comm"] is True


def test_offload_presets_allow_the_loops_optimizer() -> None:
    ds = build(make_config("zero3_offload"), world_size=2)
    assert ds["zero_optimization"]["offload_param"] == {"device": "cpu"}
    assert ds["zero_force_ds_cpu_optimizer"] is False
    assert "zero_force_ds_cpu_optimizer" not in build(make_config("zero2"), world_size=2)


def test_no_clipping_is_zero() -> None:
    assert build(make_config("zero1", max_grad_norm=None), world_size=1)["gradient_clipping"] == 0


def test_presets_are_not_mutated_between_builds() -> None:
    first = build(make_config("zero3"), world_size=1, hidden_size=8)
    first["zero_optimization"]["stage"] = 99
    again = build(make_config("zero3"), world_size=1)
    assert again["zero_optimization"]["stage"] == 3
    assert "reduce_bucket_size" not in again["zero_optimization"]


# --------------------------------------------------------------------------- precision


@pytest.mark.parametrize(
    ("config_precision", "resolved", "expected"),
    [
        ("auto", None, "fp32"),
        ("auto", "bf16", "bf16"),
        ("bf16", None, "bf16"),
        ("fp16", None, "fp16"),
        ("fp32", None, "fp32"),
    ],
)
def test_precision_sets_bf16_fp16_sections(
    config_precision: str, resolved: str | None, expected: str
) -> None:
    ds = build(make_config("zero2", precision=config_precision), 1, precision=resolved)
    assert precision_of(ds) == expected
    assert ds["bf16"]["enabled"] == (expected == "bf16")
    assert ds["fp16"]["enabled"] == (expected == "fp16")


def test_explicit_json_precision_wins_when_config_says_auto(tmp_path: Path) -> None:
    path = write_json(tmp_path, AXOLOTL_ZERO3_OFFLOAD)
    ds = build(make_config(str(path)), world_size=2, precision="fp32")
    assert precision_of(ds) == "bf16"


def test_explicit_json_precision_conflicting_with_config_is_an_error(tmp_path: Path) -> None:
    path = write_json(tmp_path, AXOLOTL_ZERO3_OFFLOAD)
    with pytest.raises(ConfigError) as info:
        build(make_config(str(path), precision="fp32"), world_size=2)
    assert "bf16.enabled: is true but training.precision is 'fp32'" in str(info.value)
    assert str(path) in str(info.value)


def test_bf16_and_fp16_together_is_an_error() -> None:
    cfg = make_config({"bf16": {"enabled": True}, "fp16": {"enabled": True}})
    with pytest.raises(ConfigError, match="bf16 and fp16 cannot both be enabled"):
        build(cfg, 1)


# --------------------------------------------------------------------------- JSON files


def test_axolotl_zero2_file_fills_every_auto(tmp_path: Path) -> None:
    path = write_json(tmp_path, AXOLOTL_ZERO2)
    ds = build(make_config(str(path), precision="bf16", max_grad_norm=2.0), world_size=4)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (2, 4)
    assert ds["train_batch_size"] == 32
    assert ds["gradient_clipping"] == 2.0
    assert ds["bf16"] == {"enabled": True}
    assert ds["fp16"]["enabled"] is False and ds["fp16"]["initial_scale_power"] == 32
    assert ds["zero_optimization"]["offload_optimizer"] == {"device": "cpu"}
    assert '"auto"' not in json.dumps(ds)


def test_axolotl_zero3_offload_file_is_accepted_by_deepspeed(tmp_path: Path) -> None:
    path = write_json(tmp_path, AXOLOTL_ZERO3_OFFLOAD)
    ds = build(make_config(str(path)), world_size=1, hidden_size=64)
    zero = ds["zero_optimization"]
    assert zero["reduce_bucket_size"] == 64 * 64
    assert zero["stage3_param_persistence_threshold"] == 640
    deepspeed_accepts(ds)


def test_relative_json_path_is_found_under_base_dir(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    write_json(tmp_path / "ds", {"zero_optimization": {"stage": 2}}, "z.json")
    ds = build(make_config("ds/z.json"), world_size=1, base_dir=tmp_path)
    assert zero_stage(ds) == 2


def test_missing_json_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError) as info:
        build(make_config(str(missing)), world_size=1)
    assert f"DeepSpeed config file not found: {missing}" in str(info.value)
    assert "zero2" in str(info.value)  # suggests the presets


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "zero_optimization": {"stage": 2},\n  "bf16": {enabled: true}\n}\n')
    with pytest.raises(ConfigError) as info:
        build(make_config(str(path)), world_size=1)
    assert str(info.value).startswith(f"{path}:3:")
    assert "not valid JSON" in str(info.value)


def test_json_that_is_not_an_object_is_rejected(tmp_path: Path) -> None:
    path = write_json(tmp_path, [1, 2])
    with pytest.raises(ConfigError, match="must be a JSON object, not list"):
        build(make_config(str(path)), world_size=1)


# --------------------------------------------------------------------------- inline dicts


def test_inline_dict_is_merged_over_derived_values() -> None:
    ds = build(make_config({"zero_optimization": {"stage": 1}, "steps_per_print": 5}), 2)
    assert zero_stage(ds) == 1
    assert ds["steps_per_print"] == 5
    assert ds["train_batch_size"] == 16


def test_explicit_values_that_agree_are_kept() -> None:
    cfg = make_config(
        {
            "train_micro_batch_size_per_gpu": 2,
            "gradient_accumulation_steps": 4,
            "train_batch_size": 16,
            "gradient_clipping": 1.0,
        }
    )
    assert build(cfg, world_size=2)["train_batch_size"] == 16


@pytest.mark.parametrize(
    ("key", "value", "origin"),
    [
        ("train_micro_batch_size_per_gpu", 4, "training.batch_size gives 2"),
        ("gradient_accumulation_steps", 1, "training.gradient_accumulation_steps gives 4"),
        ("train_batch_size", 64, "world size (2) gives 16"),
        ("gradient_clipping", 0.3, "training.max_grad_norm gives 1.0"),
        ("train_batch_size", "sixteen", "gives 16"),
    ],
)
def test_inconsistent_explicit_values_are_rejected(key: str, value: Any, origin: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(make_config({key: value}), world_size=2)
    message = str(info.value)
    assert f"{key}: is {value!r} but" in message
    assert origin in message
    assert '"auto"' in message


def test_every_conflict_is_reported_at_once(tmp_path: Path) -> None:
    path = write_json(tmp_path, {"train_batch_size": 1, "gradient_clipping": 9, "x": "auto"})
    with pytest.raises(ConfigError) as info:
        build(make_config(str(path)), world_size=2)
    assert len(info.value.issues) == 3
    assert 'x: "auto" has no value' in str(info.value)


def test_auto_optimizer_and_scheduler_sections_are_dropped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = make_config(
        {
            "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}},
            "scheduler": {"type": "WarmupDecayLR", "params": {"total_num_steps": "auto"}},
        }
    )
    with caplog.at_level(
        logging.WARNING, logger="finetune_runtime.train.backends.deepspeed_config"
    ):
        ds = build(cfg, world_size=1)
    assert "optimizer" not in ds and "scheduler" not in ds
    assert any("ignoring DeepSpeed's 'optimizer'" in r.getMessage() for r in caplog.records)


def test_explicit_optimizer_section_is_rejected() -> None:
    cfg = make_config({"optimizer": {"type": "Adam", "params": {"lr": 0.1}}})
    with pytest.raises(ConfigError) as info:
        build(cfg, world_size=1)
    assert "optimizer: explicit DeepSpeed optimizer settings are not supported" in str(info.value)
    assert "training.optimizer" in str(info.value)


def test_managed_accumulation_cannot_be_turned_on() -> None:
    with pytest.raises(ConfigError, match="managed_gradient_accumulation: must be false"):
        build(make_config({"managed_gradient_accumulation": True}), world_size=1)


def test_no_deepspeed_setting_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no DeepSpeed config"):
        build(make_config(None), world_size=1)
