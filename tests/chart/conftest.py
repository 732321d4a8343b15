"""Fixtures for the Helm chart tests: the real helm binary and a renderer."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chart_helpers import run_helm, template_args  # noqa: E402
from helm_binary import helm_bin, k8s_tools  # noqa: E402,F401  (re-exported fixtures)

Helm = Callable[..., subprocess.CompletedProcess[str]]
Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm-home")


@pytest.fixture
def helm(helm_bin: Path, helm_home: Path) -> Helm:  # noqa: F811
    """Call the real helm binary: helm("lint", chart)."""
    return lambda *args: run_helm(helm_bin, helm_home, *args)


def _values_file(tmp_path: Path, values: dict[str, Any] | None) -> Path | None:
    if values is None:
        return None
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture
def render(helm: Helm, tmp_path: Path) -> Render:
    """Render the chart with `helm template` and return the parsed objects (fails on error)."""

    def _render(
        sets: list[str] | None = None, values: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        result = helm(*template_args(sets or [], _values_file(tmp_path, values)))
        assert result.returncode == 0, result.stderr
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    return _render


@pytest.fixture
def helm_fails(helm: Helm, tmp_path: Path) -> Callable[..., str]:
    """Render with bad values; assert helm exits non-zero and return its error text."""

    def _fails(sets: list[str] | None = None, values: dict[str, Any] | None = None) -> str:
        result = helm(*template_args(sets or [], _values_file(tmp_path, values)))
        assert result.returncode != 0, f"helm accepted bad values:\n{result.stdout[:2000]}"
        return result.stderr

    return _fails
