"""The CRD: generated, structural, valid, and in agreement with the models and the reconciler."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from op_fixtures import DOC, FULL_SPEC, gang, job, observed, pod, run
from pydantic import ValidationError

from finetune_operator import crd
from finetune_operator.openapi import pruned_fields, structural_problems, to_structural
from finetune_operator.reconcile import Observed
from finetune_operator.status import PHASES
from finetune_operator.status_model import check_status

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "finetunejob.yaml"


@pytest.fixture(scope="module")
def generated() -> dict[str, Any]:
    return crd.crd()


def schema_of(definition: dict[str, Any]) -> dict[str, Any]:
    return definition["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def admit(body: dict[str, Any], definition: dict[str, Any]) -> None:
    """What the apiserver checks on write: schema validation, then nothing pruned."""
    schema = schema_of(definition)
    jsonschema.Draft4Validator(schema).validate(body)
    assert pruned_fields(body["spec"], schema["properties"]["spec"], ".spec") == []


def test_committed_crd_matches_the_generator():
    result = subprocess.run(
        [sys.executable, "-m", "finetune_operator.crd"], capture_output=True, text=True, check=True
    )
    assert result.stdout == CRD_FILE.read_text(), "crds/finetunejob.yaml is stale: run `make crd`"


def test_crd_is_a_valid_kubernetes_object(generated):
    kubernetes_validate.validate(generated, "1.37", strict=True)


def test_schema_is_structural(generated):
    assert structural_problems(schema_of(generated)) == []


def test_names_scope_and_subresources(generated):
    spec = generated["spec"]
    assert generated["metadata"]["name"] == "finetunejobs.finetune.dev"
    assert spec["group"] == "finetune.dev" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "FineTuneJob"
    assert spec["names"]["shortNames"] == ["ftj"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["storage"] and version["served"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Progress"] == ".status.progress.percent"
    assert columns["Loss"] == ".status.progress.loss"
    assert columns["ETA"] == ".status.progress.eta"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_printer_columns_point_at_declared_fields(generated):
    schema = schema_of(generated)
    for column in generated["spec"]["versions"][0]["additionalPrinterColumns"]:
        if column["jsonPath"].startswith(".metadata."):
            continue  # object metadata is the apiserver's, not in the schema
        node = schema
        for part in column["jsonPath"].strip(".").split("."):
            node = node["properties"][part]
        assert node.get("type") in ("string", "number", "integer", "object"), column


def test_config_schema_comes_from_the_runtime_model(generated):
    from finetune_runtime.config import FineTuneConfig, LoraSettings

    config = schema_of(generated)["properties"]["spec"]["properties"]["config"]
    assert set(config["properties"]) == set(FineTuneConfig.model_fields)
    assert config["x-kubernetes-preserve-unknown-fields"] is True
    assert "type" not in config  # an object or a YAML string
    lora = config["properties"]["lora"]
    r = lora["properties"]["r"]
    assert {k: v for k, v in r.items() if k != "description"} == {
        "type": "integer",
        "exclusiveMinimum": True,
        "minimum": 0,
    }
    assert r["description"] == LoraSettings.model_fields["r"].description
    assert lora["x-kubernetes-preserve-unknown-fields"] is True  # axolotl keys survive pruning
    assert config["required"] == ["base_model", "datasets"]
    assert {"$ref", "$defs", "title", "default", "const"}.isdisjoint(schema_keywords(config))


def schema_keywords(node: Any) -> set[str]:
    """Every keyword used anywhere in a schema (property names themselves excluded)."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            found.add(key)
            if key == "properties":
                for sub in value.values():
                    found |= schema_keywords(sub)
            elif isinstance(value, dict | list):
                found |= schema_keywords(value)
    elif isinstance(node, list):
        for item in node:
            found |= schema_keywords(item)
    return found


def test_spec_schema_comes_from_the_spec_model(generated):
    from finetune_operator.spec import FineTuneJobSpec

    spec = schema_of(generated)["properties"]["spec"]
    aliases = {f.alias for f in FineTuneJobSpec.model_fields.values()}
    assert set(spec["properties"]) == aliases
    assert spec["required"] == ["config"]
    quantity = spec["properties"]["resources"]["properties"]["requests"]["additionalProperties"]
    assert quantity["x-kubernetes-int-or-string"] is True


@pytest.mark.parametrize(
    "spec",
    [
        {"config": {"base_model": "x", "datasets": [{"path": "a.jsonl"}]}},
        {"config": "base_model: x\ndatasets:\n  - path: a.jsonl\n"},
        {
            "config": {
                "base_model": "x",
                "lora_r": 8,
                "micro_batch_size": 2,
                "datasets": [{"path": "a.jsonl", "type": "alpaca", "ds_type": "json"}],
            }
        },
        FULL_SPEC | {"config": {"base_model": "x", "datasets": [{"path": "a.jsonl"}]}},
    ],
    ids=["canonical", "yaml-text", "axolotl-flat", "full"],
)
def test_valid_jobs_are_admitted_unchanged(generated, spec):
    body = job(spec)
    admit(body, generated)
    from finetune_operator.spec import validate_job

    validate_job(body)  # the operator agrees


@pytest.mark.parametrize(
    "spec",
    [
        {"config": {"base_model": "x", "datasets": [{"path": "a.jsonl"}], "lora": {"r": 0}}},
        {"config": {"datasets": [{"path": "a.jsonl"}]}},
        {"config": {"base_model": "x", "datasets": []}, "nodes": 0},
        {"config": {"base_model": "x", "datasets": [{"path": "a"}]}, "resources": {"gpus": "x"}}
        | {"runPolicy": {"cleanPodPolicy": "Sometimes"}},
    ],
)
def test_invalid_jobs_are_refused_by_the_schema_too(generated, spec):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(schema_of(generated)).validate(job(spec))


def test_unknown_spec_fields_would_be_pruned(generated):
    spec_schema = schema_of(generated)["properties"]["spec"]
    assert pruned_fields(job({"gpu": 1})["spec"], spec_schema, ".spec") == [".spec.gpu"]


def statuses() -> list[dict[str, Any]]:
    """Statuses from many reconciler situations."""
    out = []
    body = job({"nodes": 2, "runPolicy": {"backoffLimit": 1}})
    first = run(body, Observed())
    out.append(first.status)
    body["status"] = first.status
    running = run(body, observed(body, gang(body, 1, "Running", "Running"), progress=DOC))
    out.append(running.status)
    body["status"] = running.status
    failing = [pod(body, 1, 0, "Running", ip="10.0.0.1"), pod(body, 1, 1, "Failed", exit_code=137)]
    restarted = run(body, observed(body, failing))
    out.append(restarted.status)
    body["status"] = restarted.status
    failed = run(body, observed(body, [pod(body, 2, 0, "Failed"), pod(body, 2, 1, "Running")]))
    out.append(failed.status)
    out.append(run(job({"config": {"base_model": ""}}), Observed()).status)
    out.append(run(job({"runPolicy": {"suspend": True}}), Observed()).status)
    done = job()
    done["status"] = run(done, Observed()).status
    done["status"] = run(done, observed(done, gang(done, 1, "Running"), progress=DOC)).status
    out.append(run(done, observed(done, gang(done, 1, "Succeeded"))).status)
    out.append(run(job({"storage": {"existingClaim": "x"}}), Observed()).status)
    return out


def test_every_status_the_reconciler_writes_is_kept_by_the_schema(generated):
    status_schema = schema_of(generated)["properties"]["status"]
    phases = set()
    for status in statuses():
        jsonschema.Draft4Validator(status_schema).validate(status)
        assert pruned_fields(status, status_schema) == [], status
        phases.add(status["phase"])
    assert phases == set(PHASES)


@pytest.mark.parametrize(
    "status",
    [
        {"phase": "Running", "attemptt": 1},  # a key the CRD does not declare: pruned
        {"phase": "Runing"},
        {"progress": {"step": "ten"}},
        {"conditions": [{"type": "Ready"}]},  # status is required
        {"startTime": "yesterday"},
    ],
)
def test_a_status_outside_the_model_fails_the_cycle_not_silently(status):
    """Cycle.finish validates each decided status against the model the CRD is made of,
    so a field the apiserver would prune is a test failure, not lost data."""
    with pytest.raises(ValidationError):
        check_status(status)


def test_structural_conversion_rules():
    schema = {
        "$defs": {"Inner": {"type": "object", "properties": {"a": {"type": "integer"}}}},
        "type": "object",
        "additionalProperties": False,
        "title": "T",
        "properties": {
            "maybe": {"anyOf": [{"$ref": "#/$defs/Inner"}, {"type": "null"}], "default": None},
            "mixed": {
                "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}]
            },
            "num": {"anyOf": [{"type": "integer"}, {"type": "number"}]},
            "free": {"type": "object", "additionalProperties": True},
            "anything": {},
            "fixed": {"const": "x", "type": "string"},
            "positive": {"type": "number", "exclusiveMinimum": 0},
        },
    }
    out = to_structural(schema)
    assert out == {
        "type": "object",
        "properties": {
            "maybe": {"type": "object", "nullable": True, "properties": {"a": {"type": "integer"}}},
            "mixed": {"x-kubernetes-preserve-unknown-fields": True},
            "num": {"type": "number"},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "anything": {"x-kubernetes-preserve-unknown-fields": True},
            "fixed": {"type": "string", "enum": ["x"]},
            "positive": {"type": "number", "exclusiveMinimum": True, "minimum": 0},
        },
    }
    assert structural_problems(out) == []
    assert structural_problems({"type": "array"}) == [": array without items"]
    assert structural_problems({"properties": {"x": {}}}) == [
        "<root>: no type",
        ".x: no type",
    ]
