"""Shared helpers for the chart tests (a uniquely named module: `conftest` is ambiguous)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "finetune-operator"
RELEASE = "ftop"
NAMESPACE = "finetune-system"


def run_helm(helm: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run helm with an isolated home so a user's repos, plugins and cache never interfere."""
    env = {
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=120, check=False, env=env
    )


def template_args(sets: list[str], values_file: Path | None) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--include-crds"]
    for item in sets:
        args += ["--set", item]
    if values_file is not None:
        args += ["--values", str(values_file)]
    return args


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj.get("kind") == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]
