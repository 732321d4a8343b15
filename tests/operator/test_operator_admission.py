"""Admission-time validation: the CRD's OpenAPI constraints and CEL rules refuse invalid jobs.

Here the rules are evaluated as the apiserver would apply them: the openAPIV3Schema with
jsonschema, every `x-kubernetes-validations` rule with a CEL interpreter (cel-python) on
the value it is attached to. The operator refuses the same jobs (spec.validate_job), so a
cluster without CEL support still reports them, as a Failed/InvalidSpec condition.
Whether the real apiserver compiles the rules within its cost budget is checked on the
real control plane (test_operator_kube_admission.py).
"""

from __future__ import annotations

import copy
from typing import Any

import celpy
import jsonschema
import pytest
from op_fixtures import FULL_SPEC, job, run

from finetune_operator import crd
from finetune_operator.spec import SpecError, validate_job

SCHEMA = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
_ENV = celpy.Environment()


def _rules(node: dict[str, Any]) -> list[dict[str, str]]:
    return list(node.get("x-kubernetes-validations") or [])


def cel_violations(node: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """`path: message` for every CEL rule that `value` breaks (recursing as the schema does)."""
    if value is None:
        return []
    found = []
    for rule in _rules(node):
        program = _ENV.program(_ENV.compile(rule["rule"]))
        if not bool(program.evaluate({"self": celpy.json_to_cel(value)})):
            found.append(f"{path or '<root>'}: {rule['message']}")
    if isinstance(value, dict):
        props = node.get("properties") or {}
        extra = node.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key) or (extra if isinstance(extra, dict) else None)
            if sub is not None:
                found += cel_violations(sub, item, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(value):
            found += cel_violations(node["items"], item, f"{path}[{i}]")
    return found


def admission_errors(body: dict[str, Any]) -> list[str]:
    """What `kubectl apply` would be told: schema errors, then CEL rule violations."""
    validator = jsonschema.Draft4Validator(SCHEMA)
    errors = [
        ".".join(str(p) for p in err.absolute_path) + f": {err.message}"
        for err in validator.iter_errors(body)
    ]
    return errors + cel_violations(SCHEMA, body)


def test_admission_every_cel_rule_compiles():
    rules = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            rules.extend(r["rule"] for r in _rules(node))
            for value in node.values():
                collect(value)

    collect(SCHEMA)
    assert len(rules) >= 12
    for rule in rules:
        _ENV.compile(rule)


POD_TEMPLATE = {
    "metadata": {"labels": {"team": "nlp"}, "annotations": {"cost-center": "42"}},
    "spec": {
        "runtimeClassName": "nvidia",
        "hostNetwork": True,
        "securityContext": {"runAsUser": 1001, "fsGroup": 2000},
        "volumes": [{"name": "shared", "nfs": {"server": "nfs", "path": "/x"}}],
        "volumeMounts": [{"name": "shared", "mountPath": "/mnt/shared"}],
        "env": [{"name": "NCCL_IB_HCA", "value": "mlx5"}],
        "envFrom": [{"configMapRef": {"name": "nccl"}}],
    },
}
VALID = [
    {},
    copy.deepcopy(FULL_SPEC) | {"schedulerName": None},
    {
        "nodes": 4,
        "podTemplate": POD_TEMPLATE,
        "runPolicy": {
            "restartPolicy": "ExitCode",
            "startupTimeoutSeconds": 300,
            "schedulingPolicy": {
                "scheduler": "volcano",
                "minAvailable": 4,
                "priorityClass": "x",
                "queue": "q",
            },
        },
        "dataset": {"uri": "s3://data/a", "endpoint": "https://minio.example:9000"},
    },
]


@pytest.mark.parametrize("spec", VALID, ids=["minimal", "full", "production"])
def test_admission_valid_jobs_pass_schema_and_cel(spec):
    body = job({k: v for k, v in spec.items() if v is not None}, name="a" * 20)
    assert admission_errors(body) == []
    validate_job(body)  # and the operator agrees


INVALID = {
    "nodes-zero": ({"nodes": 0}, "nodes"),
    "nodes-too-many": ({"nodes": 513}, "nodes"),
    "procs-too-many": ({"nprocPerNode": 65}, "nprocPerNode"),
    "reserved-env": ({"env": [{"name": "PET_NNODES", "value": "9"}]}, "set by the operator"),
    "env-two-sources": (
        {"env": [{"name": "A", "value": "1", "valueFrom": {"x": {}}}]},
        "value or valueFrom",
    ),
    "claim-and-size": ({"storage": {"existingClaim": "c", "size": "1Gi"}}, "existingClaim"),
    "gang-without-rwx": (
        {"nodes": 2, "storage": {"accessModes": ["ReadWriteOnce"]}},
        "ReadWriteMany",
    ),
    "min-available": (
        {"nodes": 2, "runPolicy": {"schedulingPolicy": {"minAvailable": 3}}},
        "minAvailable",
    ),
    "two-priorities": (
        {"priorityClassName": "a", "runPolicy": {"schedulingPolicy": {"priorityClass": "b"}}},
        "not both",
    ),
    "queue-without-volcano": (
        {"runPolicy": {"schedulingPolicy": {"queue": "q"}}},
        "Volcano queue",
    ),
    "unknown-scheduler": ({"runPolicy": {"schedulingPolicy": {"scheduler": "yunikorn"}}}, ""),
    "unknown-restart-policy": ({"runPolicy": {"restartPolicy": "Always"}}, "restartPolicy"),
    "uri-with-userinfo": ({"dataset": {"uri": "s3://key:secret@bucket/x"}}, "credentials"),
    "endpoint-with-userinfo": (
        {"dataset": {"uri": "s3://bucket/x", "endpoint": "https://key:secret@minio"}},
        "must not carry credentials",
    ),
    "template-reserved-label": (
        {"podTemplate": {"metadata": {"labels": {"finetune.dev/job": "x"}}}},
        "set by the operator",
    ),
    "template-reserved-volume": (
        {"podTemplate": {"spec": {"volumes": [{"name": "checkpoints", "emptyDir": {}}]}}},
        "operator's",
    ),
    "template-reserved-mount": (
        {"podTemplate": {"spec": {"volumeMounts": [{"name": "v", "mountPath": "/checkpoints"}]}}},
        "operator's",
    ),
    "template-reserved-env": (
        {"podTemplate": {"spec": {"env": [{"name": "PET_MASTER_ADDR", "value": "evil"}]}}},
        "set by the operator",
    ),
    "template-root": (
        {"podTemplate": {"spec": {"securityContext": {"runAsNonRoot": False}}}},
        "non-root",
    ),
}


@pytest.mark.parametrize(("spec", "fragment"), INVALID.values(), ids=INVALID.keys())
def test_admission_refuses_invalid_jobs_naming_the_field(spec, fragment):
    errors = admission_errors(job(spec))
    assert errors, "the apiserver would admit it"
    assert any(fragment in e for e in errors), errors
    with pytest.raises(SpecError):  # the operator refuses it too
        validate_job(job(spec))


@pytest.mark.parametrize(
    ("name", "nodes"), [("Llama", 1), ("a" * 55, 10), ("a" * 63, 1)], ids=["case", "long", "63"]
)
def test_admission_refuses_names_that_cannot_be_hostnames(name, nodes):
    errors = admission_errors(job({"nodes": nodes}, name=name))
    assert any(e.startswith("<root>: metadata.name") for e in errors), errors


def test_admission_accepts_the_longest_name_that_fits():
    assert admission_errors(job({"nodes": 10}, name="a" * 54)) == []


@pytest.mark.parametrize(
    "spec",
    [
        {"dataset": {"uri": "s3://AKIAABCDEFGHIJKLMNOP:hunter2@bucket/x"}},
        {"output": {"uri": "s3://b/x", "endpoint": "https://AKIAABCDEFGHIJKLMNOP:hunter2@m"}},
        {"model": {"uri": "s3://b/x", "endpoint": "ftp://AKIAABCDEFGHIJKLMNOP:hunter2@m"}},
    ],
    ids=["uri", "endpoint", "bad-scheme"],
)
def test_admission_credentials_in_uris_are_never_echoed(spec):
    decision = run(job(spec))
    failed = next(c for c in decision.status["conditions"] if c["type"] == "Failed")
    text = str(decision.status) + " ".join(e.message for e in decision.events)
    assert (
        failed["reason"] == "InvalidSpec"
        and "credentials" in failed["message"]
        or ("http" in failed["message"])
    )
    assert "hunter2" not in text and "AKIAABCDEFGHIJKLMNOP" not in text
