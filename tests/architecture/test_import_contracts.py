"""The import layers (pyproject.toml [tool.importlinter], docs/architecture.md#layers).

The real `lint-imports` checks the real tree; then copies of the tree with one forbidden
import added each show that every contract catches what it is there for (an import-linter
config that checks nothing would pass the first test too).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = {
    "operator-no-ml": "forbidden",
    "operator-runtime-surface": "forbidden",
    "runtime-no-kubernetes": "forbidden",
    "light-modules": "forbidden",
    "runtime-layers": "layers",
    "no-cycles": "acyclic_siblings",
}
ML_STACK = {"torch", "transformers", "peft", "deepspeed", "bitsandbytes", "datasets", "accelerate"}


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the packages under `root` (runtime/, operator/), its own config."""
    script = Path(sys.executable).with_name("lint-imports")
    entry = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    command = [str(script)] if script.exists() else [sys.executable, "-c", entry]
    env = dict(os.environ, PYTHONPATH=f"{root / 'runtime'}{os.pathsep}{root / 'operator'}")
    return subprocess.run(
        [*command, str(root / "pyproject.toml"), "--no-cache", "--no-logo"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def test_the_contracts_are_the_documented_ones():
    cfg = config()
    contracts = {c["id"]: c for c in cfg["contracts"]}
    assert {k: c["type"] for k, c in contracts.items()} == CONTRACTS
    assert cfg["include_external_packages"] is True  # else torch & co. are invisible
    assert ML_STACK | {"boto3"} <= set(contracts["operator-no-ml"]["forbidden_modules"])
    assert {"kopf", "kubernetes", "finetune_operator"} == set(
        contracts["runtime-no-kubernetes"]["forbidden_modules"]
    )
    light = contracts["light-modules"]
    assert {"finetune_runtime.config", "finetune_runtime.contract"} <= set(light["source_modules"])
    assert "finetune_runtime.progress.document" in light["source_modules"]
    assert ML_STACK | {"boto3", "finetune_runtime.storage", "finetune_runtime.train"} <= set(
        light["forbidden_modules"]
    )
    layers = contracts["runtime-layers"]["layers"]
    assert layers.index("train") < layers.index("model") < layers.index("storage")
    assert layers[-3:] == ["contract", "config", "errors"]
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert all(f"`{name}`" in doc for name in CONTRACTS), "docs/architecture.md names each"


def test_the_tree_keeps_every_contract():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in result.stdout


# case: (file, the import appended to it, the contracts it must break (all others stay kept),
# the offending import as the report names it)
BREAKS = {
    # two hops from the operator: finetune_operator.* -> finetune_runtime.contract -> torch
    "indirect-torch": (
        "runtime/finetune_runtime/contract.py",
        "import torch",
        {"operator-no-ml", "light-modules"},
        "finetune_runtime.contract -> torch",
    ),
    "runtime-kubernetes": (
        "runtime/finetune_runtime/storage/fetch.py",
        "import kubernetes",
        {"runtime-no-kubernetes"},
        "finetune_runtime.storage.fetch -> kubernetes",
    ),
    # exit_file is stdlib-only, so only the surface contract breaks (launch.torchrun would
    # also reach torch)
    "operator-launch": (
        "operator/finetune_operator/status.py",
        "from finetune_runtime.launch import exit_file",
        {"operator-runtime-surface"},
        "finetune_operator.status -> finetune_runtime.launch.exit_file",
    ),
    # the schema may not reach S3, and through it neither may the operator
    "config-boto3": (
        "runtime/finetune_runtime/config/yamlsafe.py",
        "import boto3",
        {"light-modules", "operator-no-ml"},
        "finetune_runtime.config.yamlsafe -> boto3",
    ),
    # storage sits below train (train -> storage exists), so this is upside down and a cycle
    "storage-train": (
        "runtime/finetune_runtime/storage/publish.py",
        "from finetune_runtime.train import checkpoint",
        {"runtime-layers", "no-cycles"},
        "finetune_runtime.storage.publish -> finetune_runtime.train.checkpoint",
    ),
    # upload already imports s3: a cycle inside one package
    "storage-cycle": (
        "runtime/finetune_runtime/storage/s3.py",
        "from finetune_runtime.storage import upload",
        {"no-cycles"},
        ".s3 -> .upload",
    ),
}


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_a_forbidden_import_breaks_its_contract(tmp_path: Path, case: str):
    path, line, broken, offender = BREAKS[case]
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("runtime/finetune_runtime", "operator/finetune_operator"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=skip)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / path
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")

    result = lint_imports(tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    report = " ".join(result.stdout.split())  # the report wraps long lines
    for contract in config()["contracts"]:
        verdict = "BROKEN" if contract["id"] in broken else "KEPT"
        assert f"{contract['name']} {verdict}" in report, (contract["id"], result.stdout)
    assert offender in report, result.stdout
