"""What only a real kube-apiserver shows: the CRD's schema enforced at admission, unknown fields
refused (strict field validation) or pruned, the garbage collector's cascade over every child,
a watch broken by an apiserver restart resumed by kopf without losing a job, and a status
write that lost a race retried from a fresh read.

Real: kube-apiserver with the generated CRD, etcd, the controller-manager's garbage collector,
the operator process as the chart's ServiceAccount. Played: the pods' containers (the node
agent reports their phases when the test says so).
"""

from __future__ import annotations

from typing import Any

import pytest
from kubeharness.api import ApiError
from kubeharness.cluster import JOBS, Cluster, wait_for
from kubeharness.control_plane import ControlPlane
from kubeharness.node_agent import NodeAgent
from kubeharness.operator_process import Identity, OperatorProcess
from kubeharness.webhook import AdmissionTrap

pytestmark = pytest.mark.slow

CONFIG = {
    "base_model": "builtin:tiny-llama",
    "datasets": [{"path": "train.jsonl"}],
    "training": {"max_steps": 20},
}


def phase_is(cluster: Cluster, ns: str, name: str, phase: str):
    return lambda: cluster.status(ns, name).get("phase") == phase


def refused(call: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call()
    return caught.value


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("nodes", 0, "spec.nodes: Invalid value: 0: spec.nodes in body should be greater than"),
        ("nodes", "two", 'spec.nodes: Invalid value: "string": spec.nodes in body must be of'),
        ("imagePullPolicy", "Sometimes", 'spec.imagePullPolicy: Unsupported value: "Sometimes"'),
    ],
)
def test_admission_refuses_specs_the_crd_schema_forbids(
    cluster: Cluster, ns: str, field: str, value: Any, message: str
):
    error = refused(lambda: cluster.create_job(ns, "bad", {"config": CONFIG, field: value}))
    assert error.status == 422
    assert message in error.body["message"]
    assert cluster.job(ns, "bad") is None  # nothing stored, nothing for the operator to do


def test_unknown_fields_are_refused_under_strict_validation_and_pruned_otherwise(
    cluster: Cluster, ns: str
):
    spec = {"config": CONFIG, "nodez": 2, "runPolicy": {"backofLimit": 3}}
    error = refused(lambda: cluster.create_job(ns, "typo", spec, fieldValidation="Strict"))
    assert error.status == 400  # BadRequest: strict decoding error
    assert 'unknown field "spec.nodez"' in error.body["message"]
    assert 'unknown field "spec.runPolicy.backofLimit"' in error.body["message"]

    response = cluster.api.http.post(
        f"{cluster.url}/{JOBS}/namespaces/{ns}/finetunejobs",
        json={
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "typo"},
            "spec": spec,
        },
        timeout=15,
    )
    assert response.status_code == 201
    assert 'unknown field \\"spec.nodez\\"' in response.headers.get("Warning", "")
    stored = cluster.job(ns, "typo")
    assert "nodez" not in stored["spec"] and "backofLimit" not in stored["spec"]["runPolicy"]
    # The free-form training config is kept whole: the operator validates it itself.
    assert stored["spec"]["config"] == CONFIG


def test_deleting_a_job_cascades_to_every_child(cluster: Cluster, node: NodeAgent, ns: str):
    cluster.create_job(ns, "cascade", {"config": CONFIG, "nodes": 2})
    kinds = ("pods", "configmaps", "services", "persistentvolumeclaims")

    def children() -> dict[str, int]:
        return {kind: len(cluster.children(kind, ns)) for kind in kinds}

    every = {"pods": 2, "configmaps": 1, "services": 1, "persistentvolumeclaims": 1}
    wait_for(lambda: children() == every, what="every child")
    for pod in cluster.pods(ns):
        node.run(pod)
    wait_for(phase_is(cluster, ns, "cascade", "Running"))
    cluster.delete_job(ns, "cascade")
    wait_for(lambda: cluster.job(ns, "cascade") is None, 60, what="the finalizer released")
    wait_for(
        lambda: children() == dict.fromkeys(kinds, 0), 90, what="the garbage collector's cascade"
    )


def test_a_watch_broken_by_an_apiserver_restart_is_resumed_without_losing_jobs(
    kube: ControlPlane, cluster: Cluster, operator: OperatorProcess, ns: str
):
    cluster.create_job(ns, "before", {"config": CONFIG})
    wait_for(lambda: cluster.pods(ns), what="the first job's worker")
    pid = operator.proc.pid if operator.proc else None
    kube.restart_apiserver(down=2.0)
    # Made the moment the apiserver is back: kopf's watches resume from resourceVersions the
    # fresh watch cache no longer holds (410 Gone), so it must list again to see these.
    cluster.create_job(ns, "after", {"config": CONFIG})
    cluster.patch_job(ns, "before", {"spec": {"runPolicy": {"suspend": True}}})
    wait_for(phase_is(cluster, ns, "after", "Created"), 90, what="the job made after the restart")
    wait_for(phase_is(cluster, ns, "before", "Suspended"), 90, what="the edit made after it")
    assert operator.proc is not None and operator.proc.pid == pid and operator.healthy()


def test_a_status_write_that_lost_a_race_is_retried_from_a_fresh_read(
    kube: ControlPlane,
    cluster: Cluster,
    node: NodeAgent,
    operator: OperatorProcess,
    operator_identity: Identity,
    ns: str,
):
    raced: list[str] = []

    def race(request: dict[str, Any]) -> None:
        """Before the operator's first status write is stored, someone else writes the job."""
        if not raced and request.get("subResource") == "status":
            name = request["name"]
            cluster.patch_job(ns, name, {"metadata": {"annotations": {"raced": "yes"}}})
            raced.append(name)

    with AdmissionTrap(
        kube,
        cluster,
        ns,
        race,
        resource="finetunejobs/status",
        group="finetune.dev",
        version="v1alpha1",
        operations=("UPDATE",),
    ):
        cluster.create_job(ns, "contended", {"config": CONFIG})
        wait_for(lambda: raced, 60, what="the operator's first status write")
        wait_for(phase_is(cluster, ns, "contended", "Created"), 60)
    writes = [
        event
        for event in cluster.requests_by(operator_identity.username)
        if (event.get("objectRef") or {}).get("subresource") == "status"
        and event["objectRef"].get("name") == "contended"
    ]
    codes = [event["responseStatus"]["code"] for event in writes]
    assert codes[0] == 409, codes  # the write made from the stale read was refused
    assert 200 in codes[1:], codes  # and the next, from a fresh read, was stored
    assert len(cluster.pods(ns)) == 1  # acting on the stale decision created nothing twice
