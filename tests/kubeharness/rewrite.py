"""Path rewriting for pods run as local processes (pure).

A pod's mount paths are absolute (`/etc/finetune`, `/checkpoints`, `/data`); on this host
each volume is a directory, so the paths a container sees are rewritten when the pod is
materialised: in command/args, env values, and string values of YAML/JSON ConfigMap files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

_REWRITTEN_SUFFIXES = (".yaml", ".yml", ".json")


def rewrite_path(value: str, mounts: dict[str, Path]) -> str:
    """`value` with a leading mount path replaced by its host directory (longest first)."""
    for mount in sorted(mounts, key=len, reverse=True):
        if value == mount or value.startswith(mount.rstrip("/") + "/"):
            return str(mounts[mount]) + value[len(mount.rstrip("/")) :]
    return value


def rewrite_tree(data: Any, mounts: dict[str, Path]) -> Any:
    """Every string in a parsed YAML/JSON document, path-rewritten."""
    if isinstance(data, str):
        return rewrite_path(data, mounts)
    if isinstance(data, list):
        return [rewrite_tree(item, mounts) for item in data]
    if isinstance(data, dict):
        return {key: rewrite_tree(value, mounts) for key, value in data.items()}
    return data


def rewrite_file_text(name: str, text: str, mounts: dict[str, Path]) -> str:
    if not name.endswith(_REWRITTEN_SUFFIXES):
        return text
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    rewritten = rewrite_tree(data, mounts)
    if rewritten == data:
        return text
    if name.endswith(".json"):
        return json.dumps(rewritten, indent=2)
    return yaml.safe_dump(rewritten, sort_keys=False)
