"""spec.output: the trained weights published to S3, and status.outputs (pure)."""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from op_fixtures import SETTINGS, after, condition, gang, job, observed, ref, run
from test_operator_crd import schema_of

from finetune_operator import crd
from finetune_operator import manifests as m
from finetune_operator.openapi import pruned_fields
from finetune_operator.reconcile import Observed
from finetune_operator.spec import SpecError, parse_spec, validate_job

OUTPUT = {
    "uri": "s3://results/runs/llama/",
    "endpoint": "http://minio:9000",
    "region": "eu-west-1",
    "secretRef": {"name": "s3-out", "accessKeyIdKey": "id", "secretAccessKeyKey": "key"},
    "merge": True,
}


def trainer_env(spec: dict[str, Any], rank: int = 0) -> list[dict[str, Any]]:
    body = job(spec)
    pod = m.build_worker_pod(ref(body), parse_spec(body["spec"]), 1, rank, SETTINGS)
    kubernetes_validate.validate(pod, "1.37", strict=True)
    return list(pod["spec"]["containers"][0]["env"])


def test_output_reaches_the_trainer_as_env_and_secret_references():
    env = trainer_env({"output": OUTPUT})
    named = {e["name"]: e for e in env}
    assert named["FINETUNE_OUTPUT_URI"] == {
        "name": "FINETUNE_OUTPUT_URI",
        "value": "s3://results/runs/llama",
    }
    assert named["FINETUNE_OUTPUT_MERGE"]["value"] == "true"
    assert named["FINETUNE_OUTPUT_ENDPOINT_URL"]["value"] == "http://minio:9000"
    assert named["FINETUNE_OUTPUT_REGION"]["value"] == "eu-west-1"
    assert named["AWS_ACCESS_KEY_ID"] == {
        "name": "AWS_ACCESS_KEY_ID",
        "valueFrom": {"secretKeyRef": {"name": "s3-out", "key": "id"}},
    }
    assert named["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "s3-out", "key": "key"}
    }
    assert all("value" not in e for e in env if e["name"].startswith("AWS_"))


def test_no_output_no_output_env():
    minimal = {"uri": "s3://results/x"}
    names = [e["name"] for e in trainer_env({"output": minimal})]
    assert "FINETUNE_OUTPUT_URI" in names and "AWS_ACCESS_KEY_ID" not in names
    assert "FINETUNE_OUTPUT_ENDPOINT_URL" not in names
    assert not [n for n in (e["name"] for e in trainer_env({})) if n.startswith("FINETUNE_OUT")]


@pytest.mark.parametrize(
    ("output", "field", "message"),
    [
        ({"uri": "gs://bucket/x"}, "spec.output.uri", "is not an s3://bucket/prefix URI"),
        ({"uri": "s3://bkt/x", "merge": "perhaps"}, "spec.output.merge", "valid boolean"),
        ({"uri": "s3://bkt/x", "endpoint": "minio:9000"}, "spec.output.endpoint", "http://"),
        ({"uri": "s3://bkt/x", "bucket": "b1"}, "spec.output.bucket", "unknown field"),
    ],
)
def test_bad_outputs_name_the_field(output: dict[str, Any], field: str, message: str):
    with pytest.raises(SpecError) as err:
        parse_spec(job({"output": output})["spec"])
    (issue,) = err.value.issues
    assert issue.field == field and message in issue.message


def test_merging_a_full_fine_tune_is_an_invalid_spec():
    body = job({"output": {"uri": "s3://bkt/x", "merge": True}})
    body["spec"]["config"]["adapter"] = "none"
    with pytest.raises(SpecError, match="spec.output.merge: a full fine-tune"):
        validate_job(body)
    d = run(body, Observed())
    assert d.status["phase"] == "Failed"
    assert condition(d.status, "Failed")["reason"] == "InvalidSpec"


@pytest.mark.parametrize("name", ["FINETUNE_OUTPUT_URI", "FINETUNE_OUTPUT_MERGE"])
def test_users_cannot_override_the_output_env(name: str):
    with pytest.raises(SpecError, match="set by the operator"):
        parse_spec(job({"env": [{"name": name, "value": "x"}]})["spec"])


def finished(spec: dict[str, Any], adapter: str = "lora") -> tuple[dict[str, Any], Any]:
    body = job(spec)
    body["spec"]["config"]["adapter"] = adapter
    body = after(body, run(body, Observed()))
    body = after(body, run(body, observed(body, gang(body, 1, "Running"))))
    return body, run(body, observed(body, gang(body, 1, "Succeeded")))


def test_outputs_are_recorded_when_the_job_succeeds():
    body, done = finished({"output": OUTPUT})
    assert "outputs" not in body["status"]  # not while it runs
    assert done.status["phase"] == "Succeeded"
    assert done.status["outputs"] == {
        "adapter": "s3://results/runs/llama/adapter/",
        "merged": "s3://results/runs/llama/merged/",
    }
    status_schema = schema_of(crd.crd())["properties"]["status"]
    jsonschema.Draft4Validator(status_schema).validate(done.status)
    assert pruned_fields(done.status, status_schema) == []


def test_a_full_fine_tune_publishes_its_model():
    _, done = finished({"output": {"uri": "s3://results/full"}}, adapter="none")
    assert done.status["outputs"] == {"model": "s3://results/full/model/"}


def test_no_output_no_outputs():
    _, done = finished({})
    assert done.status["phase"] == "Succeeded" and "outputs" not in done.status


def test_a_failed_job_records_no_outputs():
    body = job({"output": OUTPUT, "runPolicy": {"backoffLimit": 0}})
    body = after(body, run(body, Observed()))
    d = run(body, observed(body, gang(body, 1, "Failed")))
    assert d.status["phase"] == "Failed" and "outputs" not in d.status
