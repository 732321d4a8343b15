"""spec.serve: the inference Deployment and Service of a succeeded job (pure builders and
decision), valid against the official Kubernetes schemas."""

from __future__ import annotations

import kubernetes_validate
import pytest
from op_fixtures import CONFIG, FULL_SPEC, SETTINGS, gang, job, observed, ref, run

from finetune_operator import manifests as m
from finetune_operator import serving
from finetune_operator.reconcile import Observed
from finetune_operator.spec import SpecError, parse_spec, validate_job

K8S_VERSION = "1.37"
SERVE = {"replicas": 3, "port": 8080, "resources": {"requests": {"cpu": 2, "memory": "4Gi"}}}
SUCCEEDED = {
    "phase": "Succeeded",
    "completionTime": "2025-01-01T12:00:00Z",
    "attempt": 1,
}
MERGED_OUTPUT = {"uri": "s3://models/out", "merge": True, "secretRef": {"name": "s3"}}


def served(extra: dict | None = None, status: dict | None = None, **serve: object) -> dict:
    spec = {"config": CONFIG, "serve": {**SERVE, **serve}, **(extra or {})}
    return job(spec, status=SUCCEEDED if status is None else status)


def children(body: dict) -> tuple[dict, dict]:
    spec = parse_spec(body["spec"])
    return (
        serving.build_serving_deployment(ref(body), spec, body["status"], SETTINGS),
        serving.build_serving_service(ref(body), spec),
    )


@pytest.mark.parametrize(
    "extra",
    [{}, {"output": MERGED_OUTPUT}, {**FULL_SPEC, "output": MERGED_OUTPUT}, FULL_SPEC],
    ids=["pvc", "s3-merged", "full-s3", "full-pvc"],
)
def test_children_validate_and_are_owned(extra: dict) -> None:
    body = served(extra, apiKeySecretRef={"name": "api", "key": "token"})
    for child in children(body):
        kubernetes_validate.validate(child, K8S_VERSION, strict=True)
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner["uid"] == body["metadata"]["uid"] and owner["controller"] is True
        assert child["metadata"]["name"] == "llama-serve"


def test_replicas_serve_the_checkpoint_volume_read_only() -> None:
    deployment, service = children(served())
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == [
        "finetune", "serve", "/etc/finetune/config.yaml", "--host", "0.0.0.0",
        "--port", "8080", "--served-model-name", "llama",
    ]  # fmt: skip
    mounts = {v["name"]: v for v in container["volumeMounts"]}
    assert mounts["checkpoints"]["readOnly"] and mounts["config"]["readOnly"]
    claim = next(v for v in pod["volumes"] if v["name"] == "checkpoints")
    assert claim["persistentVolumeClaim"] == {"claimName": "llama-checkpoints", "readOnly": True}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert deployment["spec"]["replicas"] == 3
    # the Service load-balances over exactly these pods, not the training workers
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert labels[m.c.LABEL_COMPONENT] == "serving"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]


def test_replicas_fetch_the_uploaded_merged_model() -> None:
    status = {
        **SUCCEEDED,
        "outputs": {"adapter": "s3://models/out/adapter/", "merged": "s3://models/out/merged/"},
    }
    deployment, _ = children(served({"output": MERGED_OUTPUT}, status=status))
    pod = deployment["spec"]["template"]["spec"]
    (fetch,) = pod["initContainers"]
    assert fetch["command"][:4] == ["finetune", "fetch", "s3://models/out/merged", "/data/serve/"]
    assert pod["containers"][0]["command"][2] == "/data/serve"
    assert not any(v["name"] == "checkpoints" for v in pod["volumes"])  # any node can serve


def test_pod_is_hardened_like_the_workers_and_keeps_secrets_referenced() -> None:
    body = served({"output": MERGED_OUTPUT}, apiKeySecretRef={"name": "api", "key": "token"})
    deployment, _ = children(body)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # Like the workers' (manifests._pod_security): no UID named, the settings' fsGroup.
    assert "runAsUser" not in pod["securityContext"]
    assert pod["securityContext"].get("fsGroup") == SETTINGS.fs_group
    for container in pod["containers"] + pod["initContainers"]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        for env in container.get("env", []):
            assert "value" not in env or env["name"] == "FINETUNE_CACHE", env
    key = next(e for e in pod["containers"][0]["env"] if e["name"] == "FINETUNE_SERVE_API_KEY")
    assert key["valueFrom"] == {"secretKeyRef": {"name": "api", "key": "token"}}


def test_decide_creates_once_succeeded_and_reports_status() -> None:
    body = served()
    spec, r = parse_spec(body["spec"]), ref(body)
    running = serving.decide(r, spec, {"phase": "Running"}, None, None, SETTINGS)
    assert running.create == [] and running.status is None
    first = serving.decide(r, spec, body["status"], None, None, SETTINGS)
    assert [c["kind"] for c in first.create] == ["Deployment", "Service"]
    assert first.status is not None and first.status["readyReplicas"] == 0
    assert first.status["endpoint"] == "http://llama-serve.ml.svc:8080/v1"
    deployment, service = first.create
    deployment = {**deployment, "status": {"readyReplicas": 2}}
    steady = serving.decide(r, spec, body["status"], deployment, service, SETTINGS)
    assert steady.create == [] and steady.update == []
    assert steady.status is not None and steady.status["readyReplicas"] == 2


def test_new_outputs_or_replicas_roll_the_deployment() -> None:
    body = served()
    spec, r = parse_spec(body["spec"]), ref(body)
    (deployment, service) = serving.decide(r, spec, body["status"], None, None, SETTINGS).create
    retrained = {**body["status"], "completionTime": "2025-01-02T08:00:00Z"}
    rolled = serving.decide(r, spec, retrained, deployment, service, SETTINGS)
    (update,) = rolled.update
    old = deployment["spec"]["template"]["metadata"]["annotations"]
    new = update["spec"]["template"]["metadata"]["annotations"]
    assert old[serving.ANNOTATION_OUTPUTS_HASH] != new[serving.ANNOTATION_OUTPUTS_HASH]
    scaled = parse_spec({**body["spec"], "serve": {**SERVE, "replicas": 5}})
    (update,) = serving.decide(r, scaled, body["status"], deployment, service, SETTINGS).update
    assert update["spec"]["replicas"] == 5


def test_reconcile_of_a_succeeded_job_brings_up_serving() -> None:
    body = served()
    decision = run(body, Observed())
    kinds = sorted(c["kind"] for c in decision.create)
    assert kinds == ["Deployment", "Service"]
    assert decision.status["serving"]["model"] == "llama"
    assert decision.status["phase"] == "Succeeded"
    # without spec.serve a succeeded job creates nothing
    plain = job({"config": CONFIG}, status=SUCCEEDED)
    assert run(plain, Observed()).create == []


def test_the_cycle_that_sees_success_creates_serving_too() -> None:
    body = job({"config": CONFIG, "serve": SERVE}, status={"phase": "Running", "attempt": 1})
    obs = observed(body, gang(body, 1, "Succeeded"))
    decision = run(body, obs)
    assert decision.status["phase"] == "Succeeded"
    assert {c["kind"] for c in decision.create} >= {"Deployment", "Service"}


def test_editing_serve_never_restarts_a_training_gang() -> None:
    base = parse_spec({"config": CONFIG})
    with_serve = parse_spec({"config": CONFIG, "serve": SERVE})
    assert m.spec_hash(base, "cfg") == m.spec_hash(with_serve, "cfg")


@pytest.mark.parametrize(
    ("serve", "field"),
    [
        ({"replicas": -1}, "spec.serve.replicas"),
        ({"port": 80}, "spec.serve.port"),
        ({"servedModelName": "../x"}, "spec.serve.servedModelName"),
        ({"unknown": 1}, "spec.serve.unknown"),
        ({"apiKeySecretRef": {"name": "s"}}, "spec.serve.apiKeySecretRef.key"),
    ],
)
def test_bad_serve_specs_name_the_field(serve: dict, field: str) -> None:
    with pytest.raises(SpecError) as err:
        validate_job(job({"config": CONFIG, "serve": serve}))
    assert field in str(err.value)


def test_removing_serve_removes_the_replicas() -> None:
    body = served()
    first = run(body, Observed())
    deployment, service = first.create
    gone = job({"config": CONFIG}, status=first.status)
    decision = run(gone, Observed(serving=deployment, serving_service=service))
    assert sorted((r.kind, r.name) for r in decision.delete) == [
        ("Deployment", "llama-serve"),
        ("Service", "llama-serve"),
    ]
    assert "serving" not in decision.status
