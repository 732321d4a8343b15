"""Every example FineTuneJob is valid: its training config, its spec, and the CRD's schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from dockerfiles import parse_dockerfile

from finetune_operator.openapi import pruned_fields
from finetune_runtime.config import parse_config_with_warnings

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
CRD = REPO / "crds" / "finetunejob.yaml"
RUNTIME_DOCKERFILES = [
    REPO / "images" / "runtime" / name for name in ("Dockerfile", "Dockerfile.cpu")
]


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def jobs() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}:{i}", doc)
        for path in EXAMPLES
        for i, doc in enumerate(load(path))
        if doc.get("kind") == "FineTuneJob"
    ]


JOBS = jobs()
BY_NAME = {doc["metadata"]["name"]: doc for _, doc in JOBS}


def test_the_promised_examples_exist() -> None:
    names = {path.name for path in EXAMPLES}
    assert {"finetune.yaml", "finetune-qlora.yaml", "finetune-tiny-cpu.yaml"} <= names
    for path in EXAMPLES:
        kinds = {doc["kind"] for doc in load(path)}
        assert kinds == {"FineTuneJob"}, f"{path.name}: only FineTuneJobs (no Secrets) in examples"


@pytest.mark.parametrize(("where", "job"), JOBS, ids=[w for w, _ in JOBS])
def test_training_config_validates(where: str, job: dict[str, Any]) -> None:
    config, warnings = parse_config_with_warnings(job["spec"]["config"], source=where)
    assert warnings == [], f"{where}: keys that would be ignored: {warnings}"
    assert config.datasets


@pytest.mark.parametrize(("where", "job"), JOBS, ids=[w for w, _ in JOBS])
def test_spec_validates_with_the_operator(where: str, job: dict[str, Any]) -> None:
    spec = pytest.importorskip("finetune_operator.spec")
    valid = spec.validate_job(job)
    assert job["apiVersion"] == "finetune.dev/v1alpha1"
    assert valid.spec.nodes >= 1


@pytest.mark.parametrize(("where", "job"), JOBS, ids=[w for w, _ in JOBS])
def test_matches_the_crd_schema(where: str, job: dict[str, Any]) -> None:
    if not CRD.exists():
        pytest.skip("crds/finetunejob.yaml is not generated yet (make crd)")
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    # A CRD schema is OpenAPI 3.0: draft-4 semantics (exclusiveMinimum is a boolean).
    schema = version["schema"]["openAPIV3Schema"]
    errors = sorted(
        jsonschema.Draft4Validator(schema).iter_errors(job), key=lambda e: list(e.absolute_path)
    )
    assert not errors, "\n".join(
        f"{where}: {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )


@pytest.mark.parametrize(("where", "job"), JOBS, ids=[w for w, _ in JOBS])
def test_no_field_would_be_pruned_by_the_api_server(where: str, job: dict[str, Any]) -> None:
    if not CRD.exists():
        pytest.skip("crds/finetunejob.yaml is not generated yet (make crd)")
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    spec_schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert pruned_fields(job["spec"], spec_schema, "spec") == []


def test_production_example_is_a_multi_node_zero2_lora_on_s3() -> None:
    job = BY_NAME["llama3-8b-lora"]
    spec, config = job["spec"], job["spec"]["config"]
    assert (spec["nodes"], spec["nprocPerNode"], spec["resources"]["gpus"]) == (2, 4, 4)
    assert config["adapter"] == "lora" and config["deepspeed"] == "zero2"
    assert spec["dataset"]["uri"].startswith("s3://")
    assert spec["dataset"]["secretRef"]["name"] == "s3-credentials"
    assert "ReadWriteMany" in spec["storage"]["accessModes"]
    assert config["datasets"][0]["path"].startswith(spec["dataset"]["uri"] + "/")


def test_qlora_example_quantizes_to_four_bits() -> None:
    job = BY_NAME["mistral-7b-qlora"]
    config, _ = parse_config_with_warnings(job["spec"]["config"])
    assert config.adapter == "qlora"
    assert config.quantization is not None and config.quantization.bits == 4
    assert job["spec"]["dataset"]["endpoint"].startswith("http")


def test_tiny_cpu_example_needs_no_gpu_and_nothing_from_outside() -> None:
    job = BY_NAME["tiny-cpu"]
    spec = job["spec"]
    config, _ = parse_config_with_warnings(spec["config"])
    assert config.base_model.startswith("builtin:")
    assert spec["resources"]["gpus"] is False
    assert "nvidia.com/gpu" not in str(spec["resources"])
    assert "dataset" not in spec and "model" not in spec and "image" not in spec
    assert config.training.max_steps is not None and config.training.max_steps <= 50
    # Its dataset is baked into the runtime image at exactly that path.
    (path,) = [d.path for d in config.datasets]
    assert len(RUNTIME_DOCKERFILES) == 2
    for dockerfile in RUNTIME_DOCKERFILES:
        copies = [
            step["value"].split()
            for step in parse_dockerfile(dockerfile).structure
            if step["instruction"] == "COPY" and "--from" not in step["value"]
        ]
        assert any(words[-1] == path and (REPO / words[0]).is_file() for words in copies), (
            f"{dockerfile.name} does not COPY a dataset to {path}"
        )


def test_no_credentials_in_examples() -> None:
    for path in EXAMPLES:
        text = path.read_text()
        for doc in load(path):
            for source in ("dataset", "model"):
                if source in doc["spec"]:
                    assert set(doc["spec"][source]) <= {"uri", "endpoint", "region", "secretRef"}
        for marker in ("AKIA", "aws_secret_access_key:", "password:"):
            assert marker not in text, f"{path.name} contains {marker!r}"
