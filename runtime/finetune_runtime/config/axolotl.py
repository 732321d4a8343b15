"""Accept axolotl-style flat configs by normalising them to the canonical schema.

Axolotl configs are flat (`lora_r`, `micro_batch_size`, `datasets[].type`, ...).
`normalize` maps every key we understand onto the canonical nested form and
remembers, for each canonical location, the key the user wrote, so a validation
error on `lora.r` is reported as `lora_r` at its line. Keys that only steer
axolotl's own integrations (attention kernels, hub, ...) are on an explicit
allow-list (`finetune_runtime.config.axolotl_keys`) and ignored with a warning naming
each; any other unknown key is an error with a did-you-mean, so `lerning_rate`
never trains with the default. A setting given twice (flat and nested) with
different values, or bf16 and fp16 both on, is an error. Settings whose meaning
we cannot honour (RL trainers, unknown prompt formats, unknown optimizers) are
errors, never silently changed.
"""

from __future__ import annotations

from typing import Any

from finetune_runtime.config.axolotl_datasets import map_datasets
from finetune_runtime.config.axolotl_keys import (
    COMBINED_TOP_LEVEL,
    FLAT_MARKERS,
    IGNORED_KEYS,
    NESTED_SECTIONS,
    OPTIMIZER_MAP,
    SCALAR_MAP,
    SCHEDULER_MAP,
    SHARED_TOP_LEVEL,
    Loc,
    is_empty,
    known_flat_keys,
    unknown_key_message,
)
from finetune_runtime.config.axolotl_state import Normalized, put

__all__ = [
    "FLAT_MARKERS",
    "SCALAR_MAP",
    "SHARED_TOP_LEVEL",
    "Loc",
    "Normalized",
    "is_flat",
    "known_flat_keys",
    "normalize",
]


def is_flat(raw: dict[str, Any]) -> bool:
    return any(key in FLAT_MARKERS for key in raw)


def normalize(raw: dict[str, Any]) -> Normalized:
    """Canonical configs pass through; axolotl configs are mapped key by key."""
    data = dict(raw)
    out = Normalized(data={})
    if "dataset" in data:
        if "datasets" in data:
            out.refuse(("dataset",), "give either dataset or datasets, not both")
        else:
            single = data.pop("dataset")
            data["datasets"] = [single] if isinstance(single, dict) else single
            out.origins[("datasets", 0)] = ("dataset",)
            out.origins[("datasets",)] = ("dataset",)
    if not is_flat(data):
        out.data = data
        return out
    _normalize_flat(data, out)
    return out


def _normalize_flat(raw: dict[str, Any], out: Normalized) -> None:
    ignored: list[str] = []
    known = known_flat_keys()
    for key, value in raw.items():
        if key in ("plugins", "hatchery"):  # what a plugin does decides: warn or refuse
            _check_plugins(key, value, out)
        elif key in known:
            _map_key(key, _axolotl_value(key, value, out), out)
        elif key in IGNORED_KEYS or is_empty(value):
            ignored.append(key)
        else:
            out.refuse((key,), unknown_key_message(key, known))
    if ignored:
        out.warnings.append(
            "ignored axolotl keys with no effect here: " + ", ".join(sorted(ignored))
        )
    # The keys that combine (adapter + peft_use_dora, load_in_4bit + bnb_config_kwargs,
    # bf16 + fp16, datasets + val_set_size, ...) are read from `raw` here, not in the loop.
    _map_adapter(raw, out)
    _map_quantization(raw, out)
    _map_precision(raw, out)
    map_datasets(raw, out)
    if raw.get("special_tokens"):
        put(out, ("special_tokens",), raw["special_tokens"], ("special_tokens",))


def _map_key(key: str, value: Any, out: Normalized) -> None:
    """One known top-level key that moves on its own (the combined ones come later)."""
    if value is None and key != "datasets":
        return  # axolotl writes `key:` (null) for "use the default"
    if key in SHARED_TOP_LEVEL:
        if key in NESTED_SECTIONS and isinstance(value, dict):
            for sub, subvalue in value.items():
                put(out, (key, sub), subvalue, (key, sub))
        elif key not in COMBINED_TOP_LEVEL:
            put(out, (key,), value, (key,))
    elif key in SCALAR_MAP:
        put(out, SCALAR_MAP[key], value, (key,))
    elif key in ("optimizer", "lr_scheduler"):
        _map_choice(out, key, value)
    elif key == "rl" and value:
        out.refuse(
            ("rl",),
            f"reinforcement-learning trainers (rl: {value}) are not supported: "
            "finetune-operator runs supervised fine-tuning; remove `rl`",
        )
    elif key in ("fsdp", "fsdp_config") and value:
        out.warnings.append(
            f"{key}: FSDP is not used by finetune-operator; sharding comes from `deepspeed` "
            "(e.g. deepspeed: zero3). Training runs with DDP unless deepspeed is set."
        )


# axolotl plugins that only swap in faster kernels or log: the training they run is the
# same, so a config naming them means the same here. Any other plugin (remote Tinker
# training, RL environments, distillation, ...) changes what training *is*: an error.
NEUTRAL_PLUGINS = {
    "axolotl.integrations.liger.LigerPlugin",
    "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin",
    "axolotl.integrations.kernels.KernelsPlugin",
    "axolotl.integrations.spectrum.SpectrumPlugin",
}


def _check_plugins(key: str, value: Any, out: Normalized) -> None:
    if key == "hatchery":
        out.refuse(
            ("hatchery",),
            "hatchery (training on a remote Tinker backend, with its own LoRA rank, loss "
            "and rewards) is not supported: finetune-operator trains in its own pods; "
            "remove `hatchery` and its plugin, and set adapter/lora_r for local training",
        )
        return
    names = value if isinstance(value, list) else [value]
    for i, name in enumerate(names):
        if str(name) in NEUTRAL_PLUGINS:
            out.warnings.append(f"plugins[{i}]: {name} (kernels only) is ignored here")
        else:
            out.refuse(
                ("plugins", i),
                f"axolotl plugin {name!r} changes how axolotl trains and cannot be "
                "reproduced here; remove it (kernel-only plugins such as "
                "axolotl.integrations.liger.LigerPlugin are accepted and ignored)",
            )


# Counting keys where axolotl reads 0 as "off".
_ZERO_MEANS_UNSET = {
    "evals_per_epoch",
    "saves_per_epoch",
    "eval_steps",
    "save_steps",
    "max_steps",
    "save_total_limit",
}


def _axolotl_value(key: str, value: Any, out: Normalized) -> Any:
    """Translate axolotl's value conventions that differ from the canonical schema."""
    if key in _ZERO_MEANS_UNSET and value == 0:
        return None
    if key == "warmup_steps" and isinstance(value, float) and 0 < value < 1:
        out.origins[("training", "warmup_ratio")] = (key,)
        out.data.setdefault("training", {})["warmup_ratio"] = value
        return None
    if key == "gradient_checkpointing" and isinstance(value, str):
        out.warnings.append(
            f"gradient_checkpointing: {value!r} is treated as true (plain activation checkpointing)"
        )
        return True
    return value


def _map_choice(out: Normalized, key: str, value: Any) -> None:
    if value in (None, ""):
        return
    table, target = (
        (OPTIMIZER_MAP, ("training", "optimizer"))
        if key == "optimizer"
        else (SCHEDULER_MAP, ("training", "scheduler"))
    )
    mapped = table.get(str(value))
    if mapped is None:
        out.refuse(
            (key,),
            f"{value!r} is not supported; choose one of: {', '.join(sorted(set(table)))}",
        )
        return
    put(out, target, mapped, (key,))


def _map_adapter(raw: dict[str, Any], out: Normalized) -> None:
    adapter = raw.get("adapter")
    if adapter in (None, ""):
        adapter = "none"
    if raw.get("peft_use_dora"):
        if adapter not in ("lora", "qlora", "dora"):
            out.refuse(("peft_use_dora",), "DoRA needs adapter: lora or qlora")
        elif adapter == "qlora":
            out.refuse(
                ("peft_use_dora",), "DoRA on a 4-bit base: set adapter: dora with quantization"
            )
        adapter = "dora" if adapter == "lora" else adapter
    put(out, ("adapter",), adapter, ("adapter",))
    if raw.get("lora_target_linear"):  # as in axolotl: it wins over lora_target_modules
        put(out, ("lora", "target_modules"), "all-linear", ("lora_target_linear",), check=False)


def _map_quantization(raw: dict[str, Any], out: Normalized) -> None:
    four, eight = bool(raw.get("load_in_4bit")), bool(raw.get("load_in_8bit"))
    if four and eight:
        out.refuse(("load_in_8bit",), "load_in_4bit and load_in_8bit are exclusive")
        return
    if not (four or eight):
        return
    quant: dict[str, Any] = {"bits": 4 if four else 8}
    kwargs = raw.get("bnb_config_kwargs") or {}
    if isinstance(kwargs, dict):
        if "bnb_4bit_quant_type" in kwargs:
            quant["type"] = kwargs["bnb_4bit_quant_type"]
        if "bnb_4bit_use_double_quant" in kwargs:
            quant["double_quant"] = kwargs["bnb_4bit_use_double_quant"]
    written = ("load_in_4bit",) if four else ("load_in_8bit",)
    put(out, ("quantization",), quant, written)
    if raw.get("adapter") == "qlora" and eight:
        out.refuse(("load_in_8bit",), "adapter 'qlora' needs load_in_4bit, not 8-bit")


def _map_precision(raw: dict[str, Any], out: Normalized) -> None:
    bf16, fp16 = raw.get("bf16"), raw.get("fp16")
    if bf16 is None and fp16 is None:
        return  # the schema's default (or training.precision as written)
    if _on(bf16) and _on(fp16):
        out.refuse(("fp16",), f"bf16 ({bf16}) and fp16 ({fp16}) are both on: choose one")
        return
    if bf16 == "auto":
        precision, written = "auto", ("bf16",)
    elif bf16 is True or str(bf16).lower() == "true":
        precision, written = "bf16", ("bf16",)
    elif fp16 is True or str(fp16).lower() == "true":
        precision, written = "fp16", ("fp16",)
    else:
        precision, written = "fp32", ("bf16",)
    put(out, ("training", "precision"), precision, written)


def _on(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "auto")
