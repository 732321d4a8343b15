"""Accept axolotl-style flat configs by normalising them to the canonical schema.

Axolotl configs are flat (`lora_r`, `micro_batch_size`, `datasets[].type`, ...).
`normalize` maps every key we understand onto the canonical nested form and
remembers, for each canonical location, the key the user wrote, so a validation
error on `lora.r` is reported as `lora_r` at its line. Keys that only steer
axolotl's own integrations (wandb, plugins, kernels, ...) are on an explicit
allow-list (`finetune_runtime.config.axolotl_keys`) and ignored with a warning naming
each; any other unknown key is an error with a did-you-mean, so `lerning_rate`
never trains with the default. A setting given twice (flat and nested) with
different values, or bf16 and fp16 both on, is an error. Settings whose meaning
we cannot honour (RL trainers, unknown prompt formats, unknown optimizers) are
errors, never silently changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from finetune_runtime.config.axolotl_keys import (
    IGNORED_DATASET_KEYS,
    IGNORED_KEYS,
    is_empty,
    unknown_key_message,
)
from finetune_runtime.errors import ConfigIssue, format_path

Loc = tuple[str | int, ...]

# Keys that mark a config as axolotl-style (canonical configs never use them).
FLAT_MARKERS = {
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

# axolotl key -> canonical location (scalars that move as they are)
SCALAR_MAP: dict[str, Loc] = {
    "lora_r": ("lora", "r"),
    "lora_alpha": ("lora", "alpha"),
    "lora_dropout": ("lora", "dropout"),
    "lora_target_modules": ("lora", "target_modules"),
    "lora_modules_to_save": ("lora", "modules_to_save"),
    "lora_fan_in_fan_out": ("lora", "fan_in_fan_out"),
    "peft_use_rslora": ("lora", "use_rslora"),
    "sequence_len": ("training", "sequence_len"),
    "sample_packing": ("training", "sample_packing"),
    "micro_batch_size": ("training", "batch_size"),
    "eval_batch_size": ("training", "eval_batch_size"),
    "gradient_accumulation_steps": ("training", "gradient_accumulation_steps"),
    "num_epochs": ("training", "epochs"),
    "max_steps": ("training", "max_steps"),
    "learning_rate": ("training", "learning_rate"),
    "warmup_steps": ("training", "warmup_steps"),
    "warmup_ratio": ("training", "warmup_ratio"),
    "weight_decay": ("training", "weight_decay"),
    "adam_beta1": ("training", "adam_beta1"),
    "adam_beta2": ("training", "adam_beta2"),
    "adam_epsilon": ("training", "adam_epsilon"),
    "max_grad_norm": ("training", "max_grad_norm"),
    "save_steps": ("training", "save_steps"),
    "saves_per_epoch": ("training", "saves_per_epoch"),
    "save_total_limit": ("training", "save_total_limit"),
    "eval_steps": ("training", "eval_steps"),
    "evals_per_epoch": ("training", "evals_per_epoch"),
    "logging_steps": ("training", "logging_steps"),
    "gradient_checkpointing": ("training", "gradient_checkpointing"),
    "train_on_inputs": ("training", "train_on_inputs"),
    "resume_from_checkpoint": ("training", "resume_from_checkpoint"),
    "auto_resume_from_checkpoints": ("training", "auto_resume"),
    "tokenizer_config": ("tokenizer",),
    # experiment tracking (finetune_runtime.progress.tracking)
    "wandb_project": ("tracking", "wandb", "project"),
    "wandb_entity": ("tracking", "wandb", "entity"),
    "wandb_name": ("tracking", "wandb", "name"),
    "wandb_mode": ("tracking", "wandb", "mode"),
    "mlflow_tracking_uri": ("tracking", "mlflow", "tracking_uri"),
    "mlflow_experiment_name": ("tracking", "mlflow", "experiment_name"),
    "mlflow_run_name": ("tracking", "mlflow", "run_name"),
    "use_tensorboard": ("tracking", "tensorboard"),
    "tokens": ("added_tokens",),
}

# Canonical top-level keys that keep their name in both forms.
SHARED_TOP_LEVEL = {
    "base_model",
    "tokenizer",
    "trust_remote_code",
    "adapter",
    "datasets",
    "dataset",
    "chat_template",
    "special_tokens",
    "deepspeed",
    "output_dir",
    "seed",
    "lora",
    "quantization",
    "training",
    "tracking",
    "dataset_prepared_path",
    "dataset_processes",
}

OPTIMIZER_MAP = {
    "adamw_torch": "adamw_torch",
    "adamw_hf": "adamw_torch",
    "adamw": "adamw_torch",
    "adamw_torch_fused": "adamw_torch_fused",
    "adamw_bnb_8bit": "adamw_bnb_8bit",
    "adamw_8bit": "adamw_bnb_8bit",
    "adamw_torch_8bit": "adamw_bnb_8bit",
    "paged_adamw_8bit": "paged_adamw_8bit",
    "paged_adamw_32bit": "paged_adamw_32bit",
    "sgd": "sgd",
    "adafactor": "adafactor",
}

SCHEDULER_MAP = {
    "cosine": "cosine",
    "linear": "linear",
    "constant": "constant",
    "constant_with_warmup": "constant_with_warmup",
    "cosine_with_restarts": "cosine_with_restarts",
    "polynomial": "polynomial",
    "inverse_sqrt": "inverse_sqrt",
    "cosine_with_min_lr": "cosine_with_min_lr",
    "warmup_stable_decay": "warmup_stable_decay",
}

# Flat keys translated by the functions below (besides SCALAR_MAP and the schema's own).
COMBINED_KEYS = {
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


def top_level_fields() -> set[str]:
    """The canonical schema's top-level keys (read from the model: new fields count)."""
    from finetune_runtime.config import FineTuneConfig

    return set(FineTuneConfig.model_fields)


def known_flat_keys() -> set[str]:
    return SHARED_TOP_LEVEL | set(SCALAR_MAP) | COMBINED_KEYS | top_level_fields()


@dataclass
class Normalized:
    data: dict[str, Any]
    origins: dict[Loc, Loc] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    issues: list[ConfigIssue] = field(default_factory=list)

    def origin(self, loc: Loc) -> Loc:
        """The user-written path for a canonical location (longest known prefix)."""
        for cut in range(len(loc), -1, -1):
            prefix = loc[:cut]
            if prefix in self.origins:
                return self.origins[prefix] + loc[cut:]
        return loc


def is_flat(raw: dict[str, Any]) -> bool:
    return any(key in FLAT_MARKERS for key in raw)


def normalize(raw: dict[str, Any]) -> Normalized:
    """Canonical configs pass through; axolotl configs are mapped key by key."""
    data = dict(raw)
    out = Normalized(data={})
    if "dataset" in data:
        if "datasets" in data:
            out.issues.append(
                ConfigIssue.at(("dataset",), "give either dataset or datasets, not both")
            )
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


def _set(out: Normalized, loc: Loc, value: Any, written_as: Loc, check: bool = True) -> None:
    """Put `value` at canonical `loc`; a different value already there from another key
    the user wrote (`learning_rate` and `training.learning_rate`) is an error."""
    node: dict[str, Any] = out.data
    for part in loc[:-1]:
        child = node.setdefault(str(part), {})
        if not isinstance(child, dict):
            return
        node = child
    key = str(loc[-1])
    before = out.origins.get(loc)
    if check and key in node and before not in (None, written_as) and node[key] != value:
        out.issues.append(
            ConfigIssue.at(
                written_as,
                f"conflicts with {format_path(before)} ({node[key]!r} there, {value!r} here): "
                "give the setting once",
            )
        )
        return
    node[key] = value
    out.origins[loc] = written_as


def _normalize_flat(raw: dict[str, Any], out: Normalized) -> None:
    ignored: list[str] = []
    known = known_flat_keys()
    for key, value in raw.items():
        if key in ("plugins", "hatchery"):  # what a plugin does decides: warn or refuse
            _check_plugins(key, value, out)
            continue
        if key not in known:
            if key in IGNORED_KEYS or is_empty(value):
                ignored.append(key)
            else:
                out.issues.append(ConfigIssue.at((key,), unknown_key_message(key, known)))
            continue
        value = _axolotl_value(key, value, out)
        if value is None and key != "datasets":
            continue  # axolotl writes `key:` (null) for "use the default"
        if key in SHARED_TOP_LEVEL or key in top_level_fields():
            if key in ("lora", "quantization", "training", "tracking") and isinstance(value, dict):
                for sub, subvalue in value.items():
                    _set(out, (key, sub), subvalue, (key, sub))
            elif key not in ("adapter", "datasets", "special_tokens"):
                _set(out, (key,), value, (key,))
        elif key in SCALAR_MAP:
            if value is not None:
                _set(out, SCALAR_MAP[key], value, (key,))
        elif key in ("optimizer", "lr_scheduler"):
            _map_choice(out, key, value)
        elif key == "rl" and value:
            out.issues.append(
                ConfigIssue.at(
                    ("rl",),
                    f"reinforcement-learning trainers (rl: {value}) are not supported: "
                    "finetune-operator runs supervised fine-tuning; remove `rl`",
                )
            )
        elif key in (
            "load_in_4bit",
            "load_in_8bit",
            "bnb_config_kwargs",
            "bf16",
            "fp16",
            "lora_target_linear",
            "peft_use_dora",
            "val_set_size",
            "adapter",
        ):
            continue  # combined below
        elif key in ("fsdp", "fsdp_config") and value:
            out.warnings.append(
                f"{key}: FSDP is not used by finetune-operator; sharding comes from `deepspeed` "
                "(e.g. deepspeed: zero3). Training runs with DDP unless deepspeed is set."
            )
    if ignored:
        out.warnings.append(
            "ignored axolotl keys with no effect here: " + ", ".join(sorted(ignored))
        )
    _map_adapter(raw, out)
    _map_quantization(raw, out)
    _map_precision(raw, out)
    _map_datasets(raw, out)
    if raw.get("special_tokens"):
        _set(out, ("special_tokens",), raw["special_tokens"], ("special_tokens",))


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
        out.issues.append(
            ConfigIssue.at(
                ("hatchery",),
                "hatchery (training on a remote Tinker backend, with its own LoRA rank, loss "
                "and rewards) is not supported: finetune-operator trains in its own pods; "
                "remove `hatchery` and its plugin, and set adapter/lora_r for local training",
            )
        )
        return
    names = value if isinstance(value, list) else [value]
    for i, name in enumerate(names):
        if str(name) in NEUTRAL_PLUGINS:
            out.warnings.append(f"plugins[{i}]: {name} (kernels only) is ignored here")
        else:
            out.issues.append(
                ConfigIssue.at(
                    ("plugins", i),
                    f"axolotl plugin {name!r} changes how axolotl trains and cannot be "
                    "reproduced here; remove it (kernel-only plugins such as "
                    "axolotl.integrations.liger.LigerPlugin are accepted and ignored)",
                )
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
        out.issues.append(
            ConfigIssue.at(
                (key,),
                f"{value!r} is not supported; choose one of: {', '.join(sorted(set(table)))}",
            )
        )
        return
    _set(out, target, mapped, (key,))


def _map_adapter(raw: dict[str, Any], out: Normalized) -> None:
    adapter = raw.get("adapter")
    if adapter in (None, ""):
        adapter = "none"
    if raw.get("peft_use_dora"):
        if adapter not in ("lora", "qlora", "dora"):
            out.issues.append(
                ConfigIssue.at(("peft_use_dora",), "DoRA needs adapter: lora or qlora")
            )
        elif adapter == "qlora":
            out.issues.append(
                ConfigIssue.at(
                    ("peft_use_dora",), "DoRA on a 4-bit base: set adapter: dora with quantization"
                )
            )
        adapter = "dora" if adapter == "lora" else adapter
    _set(out, ("adapter",), adapter, ("adapter",))
    if raw.get("lora_target_linear"):  # as in axolotl: it wins over lora_target_modules
        _set(out, ("lora", "target_modules"), "all-linear", ("lora_target_linear",), check=False)


def _map_quantization(raw: dict[str, Any], out: Normalized) -> None:
    four, eight = bool(raw.get("load_in_4bit")), bool(raw.get("load_in_8bit"))
    if four and eight:
        out.issues.append(
            ConfigIssue.at(("load_in_8bit",), "load_in_4bit and load_in_8bit are exclusive")
        )
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
    _set(out, ("quantization",), quant, written)
    if raw.get("adapter") == "qlora" and eight:
        out.issues.append(
            ConfigIssue.at(("load_in_8bit",), "adapter 'qlora' needs load_in_4bit, not 8-bit")
        )


def _map_precision(raw: dict[str, Any], out: Normalized) -> None:
    bf16, fp16 = raw.get("bf16"), raw.get("fp16")
    if bf16 is None and fp16 is None:
        return  # the schema's default (or training.precision as written)
    if _on(bf16) and _on(fp16):
        out.issues.append(
            ConfigIssue.at(("fp16",), f"bf16 ({bf16}) and fp16 ({fp16}) are both on: choose one")
        )
        return
    if bf16 == "auto":
        precision, written = "auto", ("bf16",)
    elif bf16 is True or str(bf16).lower() == "true":
        precision, written = "bf16", ("bf16",)
    elif fp16 is True or str(fp16).lower() == "true":
        precision, written = "fp16", ("fp16",)
    else:
        precision, written = "fp32", ("bf16",)
    _set(out, ("training", "precision"), precision, written)


def _on(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "auto")


def _map_datasets(raw: dict[str, Any], out: Normalized) -> None:
    datasets = raw.get("datasets")
    if datasets is None and isinstance(raw.get("pretraining_dataset"), list):
        datasets = [
            {"path": d.get("path"), "type": "completion", "field": d.get("text_column", "text")}
            for d in raw["pretraining_dataset"]
            if isinstance(d, dict)
        ]
    if datasets is None:
        return
    if not isinstance(datasets, list):
        _set(out, ("datasets",), datasets, ("datasets",))
        return
    val = raw.get("val_set_size")
    mapped = []
    for i, entry in enumerate(datasets):
        out.origins[("datasets", i)] = ("datasets", i)
        if not isinstance(entry, dict):
            mapped.append(entry)
            continue
        ds = _map_dataset(entry, i, out)
        if val not in (None, "", 0) and "splits" not in ds:
            ds["splits"] = {"validation": val}
            out.origins[("datasets", i, "splits", "validation")] = ("val_set_size",)
        mapped.append(ds)
    out.data["datasets"] = mapped
    out.origins[("datasets",)] = ("datasets",)


# axolotl dataset keys we translate; everything else on a dataset entry is ignored.
_DATASET_KEYS = {
    "field_messages": "field_messages",
    "message_field_role": "role_field",
    "message_field_content": "content_field",
    "roles_to_train": "roles_to_train",
    "chat_template": "chat_template",
    "field": "field_text",
    "field_system": "field_system",
    "system_prompt": "system_prompt",
}
_DATASET_TRANSLATED = {"type", "format", "message_property_mappings", "roles"}


def dataset_fields() -> set[str]:
    """The canonical dataset keys (read from the model: new fields count)."""
    from finetune_runtime.config import DatasetSettings

    return set(DatasetSettings.model_fields)


def _map_dataset(entry: dict[str, Any], i: int, out: Normalized) -> dict[str, Any]:
    ds: dict[str, Any] = {}
    here: Loc = ("datasets", i)
    canonical = dataset_fields()
    known = canonical | set(_DATASET_KEYS) | _DATASET_TRANSLATED
    ignored = []
    for key, value in entry.items():
        if key in _DATASET_KEYS and value is not None:
            ds[_DATASET_KEYS[key]] = value
            out.origins[here + (_DATASET_KEYS[key],)] = here + (key,)
        elif key in canonical and key != "format":
            ds[key] = value
        elif key not in known:
            if key in IGNORED_DATASET_KEYS or is_empty(value):
                ignored.append(key)
            else:
                message = unknown_key_message(key, known, "dataset key")
                out.issues.append(ConfigIssue.at(here + (key,), message))
    if ignored:
        out.warnings.append(
            f"datasets[{i}]: ignored axolotl keys with no effect here: {', '.join(sorted(ignored))}"
        )
    split, path = ds.get("split"), str(entry.get("path", ""))
    if split not in (None, "train") and path.endswith((".json", ".jsonl")):
        out.issues.append(
            ConfigIssue.at(
                here + ("split",),
                f"split {split!r} is not supported for a local JSON file: it is read whole as "
                "the train split; cut the file (or use val_set_size for a validation split)",
            )
        )
    mappings = entry.get("message_property_mappings")
    if isinstance(mappings, dict):
        if "role" in mappings:
            ds["role_field"] = mappings["role"]
        if "content" in mappings:
            ds["content_field"] = mappings["content"]
    if "roles" in entry and isinstance(entry["roles"], dict):
        out.warnings.append(
            f"datasets[{i}].roles: role remapping is ignored; roles are read as written"
        )
    kind = entry.get("type", entry.get("format"))
    out.origins[here + ("format",)] = here + ("type",)
    if isinstance(kind, dict):
        ds.update(_custom_type(kind))
    elif kind is not None:
        fmt, style = _dataset_format(str(kind))
        if fmt is None:
            out.issues.append(
                ConfigIssue.at(
                    ("datasets", i, "type"),
                    f"dataset type {kind!r} is not supported; use alpaca (alpaca:chat), "
                    "sharegpt, chat_template, completion, or a custom mapping "
                    "{field_instruction, field_input, field_output, format, no_input_format}",
                )
            )
        else:
            ds["format"] = fmt
            if style:
                ds["prompt_style"] = style
            if kind.startswith("sharegpt:") or kind.startswith("chat_template."):
                ds.setdefault("chat_template", None)
    return ds


def _dataset_format(kind: str) -> tuple[str | None, str | None]:
    base = kind.split(":")[0].split(".")[0]
    if base in ("alpaca", "alpaca_w_system", "alpaca_instruct"):
        style = "chat" if ":chat" in kind or kind.startswith("alpaca_chat") else None
        return "alpaca", style
    if base == "alpaca_chat":
        return "alpaca", "chat"
    if base in ("sharegpt", "chat_template", "chatml", "messages", "conversation"):
        return "sharegpt", None
    if base in ("completion", "pretrain", "text"):
        return "completion", None
    if base in ("alpaca", "sharegpt", "completion", "custom"):
        return base, None
    return None, None


def _custom_type(spec: dict[str, Any]) -> dict[str, Any]:
    """axolotl's user-defined prompt format: a mapping under `type:`."""
    ds: dict[str, Any] = {"format": "custom"}
    for key in (
        "field_instruction",
        "field_input",
        "field_output",
        "field_system",
        "system_prompt",
    ):
        if spec.get(key) is not None:
            ds[key] = spec[key]
    if spec.get("format") is not None:
        ds["prompt_format"] = spec["format"]
    if spec.get("no_input_format") is not None:
        ds["no_input_format"] = spec["no_input_format"]
    fmt, prompt = spec.get("system_format"), spec.get("system_prompt")
    if isinstance(fmt, str) and isinstance(prompt, str):  # else the schema reports the type
        ds["system_prompt"] = fmt.replace("{system}", prompt)
    return ds
