"""SHA-256 manifests for every weights directory we write, and their verification.

Each adapter, merged model, full-model output and checkpoint gets
`finetune-manifest.json` beside its files:

    {"format": 1, "files": {"adapter_model.safetensors": {"sha256": "...", "size": 123}, ...},
     "identity": {...}}

`files` covers every file in the directory tree except the manifest itself and the
checkpoint's COMPLETE marker (written after it). `identity` (optional) records what the
weights belong to: for an adapter the base model it was trained on, for a merged model
the adapters folded into it. Needs only the standard library, so `finetune serve` (and
anything else) can call `verify_weights(dir)` before loading.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from finetune_runtime.errors import IntegrityError

MANIFEST = "finetune-manifest.json"
FORMAT = 1
_SKIP = {MANIFEST, "COMPLETE"}
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(directory: Path) -> list[str]:
    found = []
    for dirpath, _, filenames in os.walk(directory):
        for name in filenames:
            rel = Path(dirpath, name).relative_to(directory).as_posix()
            if rel not in _SKIP:
                found.append(rel)
    return sorted(found)


def write_manifest(directory: Path, identity: dict[str, Any] | None = None) -> Path:
    """Hash every file under `directory` into its manifest (atomically replaced)."""
    files = {
        rel: {"sha256": sha256_file(directory / rel), "size": (directory / rel).stat().st_size}
        for rel in _files(directory)
    }
    manifest: dict[str, Any] = {"format": FORMAT, "files": files}
    if identity is not None:
        manifest["identity"] = identity
    path = directory / MANIFEST
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def has_manifest(directory: Path) -> bool:
    return (directory / MANIFEST).is_file()


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IntegrityError(f"{directory}: no {MANIFEST}; cannot verify its weights") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise IntegrityError(f"{path}: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise IntegrityError(f"{path}: not a finetune manifest (no files table)")
    return manifest


def identity_of(directory: Path) -> dict[str, Any]:
    """The identity recorded in a directory's manifest ({} when none)."""
    if not has_manifest(directory):
        return {}
    identity = read_manifest(directory).get("identity")
    return identity if isinstance(identity, dict) else {}


ARCHITECTURE_KEYS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
)


def architecture_of(hf_config: Any) -> dict[str, Any]:
    """The shape-defining fields of a transformers config (what an adapter depends on)."""
    return {
        key: getattr(hf_config, key)
        for key in ARCHITECTURE_KEYS
        if isinstance(getattr(hf_config, key, None), int | str)
    }


def manifest_id(directory: Path) -> str | None:
    """SHA-256 of the manifest itself: one id for the whole set of weights, or None."""
    path = directory / MANIFEST
    return sha256_file(path) if path.is_file() else None


def verify_weights(directory: str | Path, *, required: bool = True) -> dict[str, Any] | None:
    """Check every file listed in `directory`'s manifest: present, same size, same SHA-256.

    Returns the manifest, or None when there is none and `required` is False (weights
    from elsewhere, e.g. a hub download). Raises IntegrityError naming the first bad
    file. Files not listed (added later, e.g. a README) are not checked.
    """
    directory = Path(directory)
    if not has_manifest(directory):
        if required:
            read_manifest(directory)  # raises the "no manifest" error
        return None
    manifest = read_manifest(directory)
    for rel, entry in sorted(manifest["files"].items()):
        path = directory / rel
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise IntegrityError(f"{path}: missing (listed in {MANIFEST})") from None
        if size != entry.get("size"):
            raise IntegrityError(
                f"{path}: {size} bytes, {entry.get('size')} expected (truncated or replaced)"
            )
        if sha256_file(path) != entry.get("sha256"):
            raise IntegrityError(
                f"{path}: SHA-256 differs from {MANIFEST} (corrupted or modified); "
                "do not use these weights: restore them or train again"
            )
    return manifest
