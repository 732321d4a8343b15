"""axolotl's `datasets:` (and `pretraining_dataset:`, `val_set_size:`) in canonical form.

Each entry's keys are mapped by `DATASET_KEYS` (read from the schema's markers), its
`type:` becomes `format` (+ `prompt_style`, or a custom template), and keys we cannot use
are either ignored with a warning (`IGNORED_DATASET_KEYS`) or refused with a did-you-mean.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from finetune_runtime.config.axolotl_keys import (
    DATASET_KEYS,
    DATASET_TRANSLATED,
    IGNORED_DATASET_KEYS,
    Loc,
    dataset_fields,
    is_empty,
    unknown_key_message,
)
from finetune_runtime.config.axolotl_state import Normalized, put
from finetune_runtime.config.base import FORMATS_GROUP

# The keys of axolotl's custom prompt format (a mapping under `type:`) kept as they are.
CUSTOM_TYPE_KEYS = ("field_instruction", "field_input", "field_output", "field_system")


def map_datasets(raw: dict[str, Any], out: Normalized) -> None:
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
        put(out, ("datasets",), datasets, ("datasets",))
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


def _map_dataset(entry: dict[str, Any], i: int, out: Normalized) -> dict[str, Any]:
    here: Loc = ("datasets", i)
    ds = _dataset_keys(entry, i, out)
    split, path = ds.get("split"), str(entry.get("path", ""))
    if split not in (None, "train") and path.endswith((".json", ".jsonl")):
        out.refuse(
            here + ("split",),
            f"split {split!r} is not supported for a local JSON file: it is read whole as "
            "the train split; cut the file (or use val_set_size for a validation split)",
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
    _dataset_type(entry.get("type", entry.get("format")), ds, i, out)
    return ds


def _dataset_keys(entry: dict[str, Any], i: int, out: Normalized) -> dict[str, Any]:
    """The entry's keys that move as they are (renamed where axolotl names them apart)."""
    ds: dict[str, Any] = {}
    here: Loc = ("datasets", i)
    canonical = dataset_fields()
    known = canonical | set(DATASET_KEYS) | DATASET_TRANSLATED
    ignored = []
    for key, value in entry.items():
        if key in DATASET_KEYS and value is not None:
            ds[DATASET_KEYS[key]] = value
            out.origins[here + (DATASET_KEYS[key],)] = here + (key,)
        elif key in canonical and key != "format":
            ds[key] = value
        elif key not in known:
            if key in IGNORED_DATASET_KEYS or is_empty(value):
                ignored.append(key)
            else:
                out.refuse(here + (key,), unknown_key_message(key, known, "dataset key"))
    if ignored:
        out.warnings.append(
            f"datasets[{i}]: ignored axolotl keys with no effect here: {', '.join(sorted(ignored))}"
        )
    return ds


def _dataset_type(kind: Any, ds: dict[str, Any], i: int, out: Normalized) -> None:
    """axolotl's `type:` (or `format:`) as canonical `format` and `prompt_style`."""
    out.origins[("datasets", i, "format")] = ("datasets", i, "type")
    if isinstance(kind, dict):
        ds.update(_custom_type(kind))
        return
    if kind is None:
        return
    fmt, style = _dataset_format(str(kind))
    if fmt is None and str(kind) in _plugin_formats():
        fmt = str(kind)
    if fmt is None:
        out.refuse(
            ("datasets", i, "type"),
            f"dataset type {kind!r} is not supported; use alpaca (alpaca:chat), "
            "sharegpt, chat_template, completion, a custom mapping "
            "{field_instruction, field_input, field_output, format, no_input_format}, "
            f"or a format a plugin package registers (none installed here is named {kind!r})",
        )
        return
    ds["format"] = fmt
    if style:
        ds["prompt_style"] = style
    if kind.startswith("sharegpt:") or kind.startswith("chat_template."):
        ds.setdefault("chat_template", None)


def _plugin_formats() -> set[str]:
    """Format names registered in this environment (package metadata only, nothing imported).

    axolotl's `type:` names many prompt styles we do not implement, so an axolotl-style
    config names a plugin's format only where the plugin is installed; the canonical
    `format:` key accepts any well-formed name and leaves the lookup to the data layer.
    """
    return {ep.name for ep in entry_points(group=FORMATS_GROUP)}


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
    for key in (*CUSTOM_TYPE_KEYS, "system_prompt"):
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
