"""Secrets never leak through the operator: the real process on the real control plane.

Jobs reference S3 credentials (dataset, model, output `secretRef`s) and an API token
(`env[].valueFrom.secretKeyRef`) whose Secrets hold unique markers; one env entry holds
a literal token (bad practice, but users do it). The jobs run through every path that
writes text somewhere: InvalidSpec (bad config, bad env entries), gang creation, worker
failures and restarts, BackoffLimitExceeded, a fixed spec, success. The operator runs
at DEBUG log level (`-v`), the most it ever prints.

What is real: the `finetune-operator` process (kopf + kubernetes client, as the chart's
ServiceAccount under the chart's RBAC), kube-apiserver with the generated CRD and its audit
log, the controller-manager, the scheduler, the operator's metrics endpoint. Played by the
test (cannot exist here): the pods' containers (the node agent reports their phases).
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubeharness.api import ApiError
from kubeharness.cluster import Cluster, wait_for
from kubeharness.control_plane import free_port
from kubeharness.node_agent import NodeAgent
from kubeharness.operator_process import Identity, OperatorProcess
from leak_helpers import Markers, assert_clean

from finetune_operator.manifests import PodSettings
from finetune_operator.reconcile import Observed, reconcile

pytestmark = pytest.mark.slow

NS = "secure"
CONFIG = {
    "base_model": "builtin:tiny-llama",
    "datasets": [{"path": "train.jsonl"}],
    "training": {"max_steps": 5},
}


class VerboseOperator(OperatorProcess):
    """The real console script with `-v` added (kopf and our loggers at DEBUG)."""

    def executable(self) -> str:  # type: ignore[override]
        wrapper = self.workdir / "finetune-operator-verbose"
        wrapper.write_text(f'#!/bin/sh\nexec "{OperatorProcess.executable()}" -v "$@"\n')
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
        return str(wrapper)


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, operator_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    process = VerboseOperator(
        operator_kubeconfig, tmp_path_factory.mktemp("operator"), progress_port=free_port()
    )
    process.start()
    yield process
    process.stop()


def secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}


def source(uri: str) -> dict[str, Any]:
    return {"uri": uri, "endpoint": "http://minio:9000", "secretRef": {"name": "s3-creds"}}


def job_spec(markers: Markers, **extra: Any) -> dict[str, Any]:
    return {
        "config": CONFIG,
        "dataset": source("s3://datasets/alpaca"),
        "model": source("s3://models/tiny"),
        "output": source("s3://results/run"),
        "env": [
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
            {"name": "API_TOKEN", "value": markers.inline},
        ],
        "runPolicy": {"backoffLimit": 1},
        **extra,
    }


def phase(cluster: Cluster, name: str) -> str | None:
    return cluster.status(NS, name).get("phase")


def failed_reason(cluster: Cluster, name: str) -> str:
    conditions = cluster.status(NS, name).get("conditions") or []
    return next(c for c in conditions if c["type"] == "Failed")["reason"]


def gang(cluster: Cluster, attempt: int, name: str, count: int) -> list[dict[str, Any]]:
    def ready() -> list[dict[str, Any]] | None:
        pods = [p for p in cluster.pods(NS, attempt) if p["metadata"]["name"].startswith(name)]
        return pods if len(pods) == count else None

    return wait_for(ready, what=f"{count} pod(s) of {name} attempt {attempt}")


def check_pod_references(pod: dict[str, Any], markers: Markers) -> None:
    """Credentials only as secretKeyRefs; the one inline value only where the user put it."""
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    for container in spec.get("initContainers", []) + spec["containers"]:
        for env in container.get("env", []):
            if env["name"] in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN"):
                assert "value" not in env, env
                assert set(env["valueFrom"]) == {"secretKeyRef"}, env
            if env.get("value") == markers.inline:
                assert (container["name"], env["name"]) == ("trainer", "API_TOKEN")
    for name in ("fetch-dataset", "fetch-model"):
        (init,) = [c for c in spec["initContainers"] if c["name"] == name]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in init["env"]}
        assert refs == {
            "AWS_ACCESS_KEY_ID": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"},
            "AWS_SECRET_ACCESS_KEY": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"},
        }
    without_inline = json.dumps(pod).replace(json.dumps(markers.inline), '"<inline>"')
    assert_clean(without_inline, markers, f"pod {pod['metadata']['name']}")


def test_secrets_never_reach_logs_events_status_children_or_metrics(
    cluster: Cluster,
    node: NodeAgent,
    operator: OperatorProcess,
    operator_identity: Identity,
    markers: Markers,
) -> None:
    kubelet = node
    node.auto_run = False
    cluster.create_namespace(NS)
    s3_keys = {"AWS_ACCESS_KEY_ID": markers.key_id, "AWS_SECRET_ACCESS_KEY": markers.secret}
    cluster.post(f"api/v1/namespaces/{NS}/secrets", secret("s3-creds", s3_keys))
    cluster.post(f"api/v1/namespaces/{NS}/secrets", secret("hf", {"token": markers.token}))

    # 1. InvalidSpec: a broken config; env entries that are wrong (value and valueFrom,
    #    a non-string value holding the token, a reserved name given a literal key).
    cluster.create_job(NS, "bad-config", job_spec(markers, config="lora_r: [\nbase_model: x"))
    bad_env = job_spec(markers)
    from_secret = {"secretKeyRef": {"name": "hf", "key": "token"}}
    # A non-string value is refused by the CRD schema at admission, naming only its type.
    bad_env["env"] = [{"name": "OTHER", "value": {"nested": markers.inline}}]
    with pytest.raises(ApiError) as refused:
        cluster.create_job(NS, "bad-env", bad_env)
    assert refused.value.status == 422 and "spec.env[0].value" in str(refused.value)
    assert_clean(str(refused.value), markers, "the apiserver's refusal")
    bad_env["env"] = [
        {"name": "API_TOKEN", "value": markers.inline, "valueFrom": from_secret},
        {"name": "AWS_SECRET_ACCESS_KEY", "value": markers.inline},
        {"name": "BAD NAME", "value": markers.inline},
    ]
    # The CRD's CEL rules refuse these at admission too, quoting names, never values.
    with pytest.raises(ApiError) as refused:
        cluster.create_job(NS, "bad-env", bad_env)
    assert refused.value.status == 422
    for field in ("spec.env[0]", "spec.env[1].name", "spec.env[2].name"):
        assert field in str(refused.value)
    assert_clean(str(refused.value), markers, "the apiserver's refusal")
    # The operator checks them again (jobs stored before the rules existed, clusters
    # without CEL): in process, the same refusal as an InvalidSpec condition.
    body = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "bad-env", "namespace": NS, "uid": "u", "generation": 1},
        "spec": bad_env,
    }
    decision = reconcile(body, Observed(), datetime.now(UTC), PodSettings("img", 9400))
    (failed,) = [c for c in decision.status["conditions"] if c["type"] == "Failed"]
    message = failed["message"]
    assert failed["reason"] == "InvalidSpec"
    assert "spec.env[0]" in message and "spec.env[2]" in message and "AWS_SECRET" in message
    assert_clean(message + " ".join(e.message for e in decision.events), markers, "InvalidSpec")
    wait_for(lambda: phase(cluster, "bad-config") == "Failed", what="bad-config InvalidSpec")
    assert failed_reason(cluster, "bad-config") == "InvalidSpec"

    # 2. A gang whose workers fail until the backoff limit is exhausted.
    cluster.create_job(NS, "private", job_spec(markers, nodes=2))
    for attempt in (1, 2):
        pods = gang(cluster, attempt, "private", 2)
        for pod in pods:
            check_pod_references(pod, markers)
            kubelet.run(pod)
        wait_for(lambda: phase(cluster, "private") == "Running", what="private Running")
        kubelet.finish(pods[1], exit_code=1, reason="Error")
    wait_for(lambda: phase(cluster, "private") == "Failed", what="BackoffLimitExceeded")
    assert failed_reason(cluster, "private") == "BackoffLimitExceeded"

    # 3. The broken config is fixed: the job starts over and succeeds.
    cluster.patch_job(NS, "bad-config", {"spec": {"config": CONFIG}})
    (pod,) = gang(cluster, 1, "bad-config", 1)
    check_pod_references(pod, markers)
    kubelet.run(pod)
    wait_for(lambda: phase(cluster, "bad-config") == "Running", what="fixed job Running")
    kubelet.finish(pod, exit_code=0)
    wait_for(lambda: phase(cluster, "bad-config") == "Succeeded", what="fixed job Succeeded")

    # Everything the operator wrote or printed.
    jobs = cluster.items(f"apis/finetune.dev/v1alpha1/namespaces/{NS}/finetunejobs")
    statuses = json.dumps([job.get("status") for job in jobs])
    events = json.dumps(cluster.items("api/v1/events"))
    config_maps = json.dumps(cluster.items("api/v1/configmaps"))
    metrics = operator.metrics()
    logs = operator.logs()
    assert "DEBUG" in logs or "[DEBUG" in logs, "the operator ran at DEBUG level"
    assert "InvalidSpec" in events and "BackoffLimitExceeded" in events
    for text, where in (
        (statuses, "job status"),
        (events, "events"),
        (config_maps, "ConfigMaps"),
        (metrics, "the metrics endpoint"),
        (logs, "the operator's stdout/stderr"),
    ):
        assert_clean(text, markers, where)
    for pod in cluster.pods(NS):
        check_pod_references(pod, markers)

    # The operator never asked for a Secret (it has no RBAC for them either).
    operator_calls = cluster.requests_by(operator_identity.username)
    assert operator_calls, "the operator's requests are audited"
    asked = [e for e in operator_calls if (e.get("objectRef") or {}).get("resource") == "secrets"]
    assert not asked, "the operator read Secrets"
