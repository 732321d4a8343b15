"""The chart's RBAC allows every API call the real operator makes, and nothing it never needs.

The real `finetune-operator` process runs with the exact arguments the chart's Deployment
renders, authenticated as the chart's ServiceAccount with exactly the (Cluster)Roles and
bindings `helm template` renders, on the real control plane (tests/kubeharness), through a
job's life: creation, a failed worker and gang replacement, success, TTL deletion, a config
change (ConfigMap patch), an invalid spec, suspension, a permanent failure (its log read),
coscheduling and Volcano PodGroups, a job with an older version's finalizer, and leader
election (the Lease). The apiserver's RBAC authorizer decides
every request; its audit log records each with the user, verb, resource and answer: a 403
fails the test, and so does a granted verb no request used.

Played, because it cannot exist here: the pods' containers (the node agent reports phases).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_helpers import by_kind
from kubeharness.cluster import Cluster, wait_for
from kubeharness.control_plane import free_port
from kubeharness.node_agent import NodeAgent
from kubeharness.operator_process import (
    OperatorProcess,
    install_chart_rbac,
    service_account_token,
)

pytestmark = pytest.mark.slow

CONFIG = {
    "base_model": "builtin:tiny-llama",
    "datasets": [{"path": "train.jsonl"}],
    "training": {"max_steps": 20},
}
# Granted although no request uses it: the OwnerReferencesPermissionEnforcement admission plugin
# checks it when the operator sets blockOwnerDeletion on its children's owner references.
NOT_A_CALL = {
    ("finetune.dev", "finetunejobs/finalizers", "update"),
    # Needs a running Kueue to gate pods: exercised, with the chart's RBAC, by
    # tests/operator/test_operator_kueue_real.py (which checks the audit log for it).
    ("kueue.x-k8s.io", "workloads", "delete"),
}
_runs = itertools.count(1)
CRD_DIR = Path(__file__).resolve().parents[1] / "operator" / "crds"


def rbac_attributes(event: dict[str, Any]) -> tuple[str, str, str] | None:
    """(apiGroup, resource[/subresource], verb) of an audited request; None for discovery."""
    ref = event.get("objectRef") or {}
    if not ref.get("resource"):
        return None
    resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    return ref.get("apiGroup", ""), resource, event["verb"]


def pods_of(cluster: Cluster, ns: str, attempt: int, count: int) -> list[dict[str, Any]]:
    return wait_for(
        lambda: (pods := cluster.pods(ns, attempt, live=True)) and len(pods) == count and pods,
        what=f"{count} pods of attempt {attempt}",
    )


def phase(cluster: Cluster, ns: str, name: str, want: str) -> None:
    wait_for(lambda: cluster.status(ns, name).get("phase") == want, what=f"{name} {want}")


def life_of_jobs(cluster: Cluster, node: NodeAgent, ns: str) -> None:
    """Exercise every kind of call the operator makes."""
    # A gang that loses a worker, restarts, succeeds and is deleted after its TTL.
    cluster.create_job(
        ns, "gang", {"config": CONFIG, "nodes": 2, "runPolicy": {"ttlSecondsAfterFinished": 1}}
    )
    first = pods_of(cluster, ns, 1, 2)
    for pod in first:
        node.run(pod)
    phase(cluster, ns, "gang", "Running")
    node.finish(first[1], exit_code=137)
    second = pods_of(cluster, ns, 2, 2)
    for pod in second:
        node.run(pod)
    phase(cluster, ns, "gang", "Running")
    for pod in second:
        node.finish(pod, 0)
    wait_for(lambda: cluster.job(ns, "gang") is None, what="gang deleted after its TTL")

    # A config change while active: the effective-config ConfigMap is patched.
    cluster.create_job(ns, "edited", {"config": CONFIG})
    pods_of(cluster, ns, 1, 1)
    edited = {**CONFIG, "training": {"max_steps": 40}}
    cluster.patch_job(ns, "edited", {"spec": {"config": edited}})
    wait_for(
        lambda: any(
            "max_steps: 40" in str(cm.get("data")) for cm in cluster.children("configmaps", ns)
        ),
        what="ConfigMap patched with the new config",
    )
    # Suspension deletes the pods.
    cluster.patch_job(ns, "edited", {"spec": {"runPolicy": {"suspend": True}}})
    phase(cluster, ns, "edited", "Suspended")

    # An invalid spec the schema cannot see (a config that is not YAML): Failed, an event.
    cluster.create_job(ns, "broken", {"config": "lora_r: [\nbase_model: x"})
    phase(cluster, ns, "broken", "Failed")

    # A permanent failure (the runtime's dataset-error exit code): its log is read.
    cluster.create_job(ns, "bad-data", {"config": CONFIG})
    pod = _pod_named(cluster, ns, "bad-data")
    node.run(pod)
    node.finish(pod, exit_code=3)
    phase(cluster, ns, "bad-data", "Failed")

    # Gang schedulers: the job's PodGroup is looked up and created.
    for scheduler in ("coscheduling", "volcano"):
        policy = {"schedulingPolicy": {"scheduler": scheduler}}
        cluster.create_job(ns, scheduler, {"config": CONFIG, "runPolicy": policy})
        _pod_named(cluster, ns, scheduler)

    # A job from an older operator version still carries its finalizer: kopf patches it away.
    legacy = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "legacy", "finalizers": ["finetune.dev/finalizer"]},
        "spec": {"config": CONFIG},
    }
    cluster.post(f"apis/finetune.dev/v1alpha1/namespaces/{ns}/finetunejobs", legacy)
    wait_for(
        lambda: not (cluster.job(ns, "legacy") or {})["metadata"].get("finalizers"),
        what="legacy finalizer removed",
    )

    # spec.serve: once it succeeded, the inference Deployment + Service; scaling patches the
    # Deployment; dropping spec.serve deletes both.
    # (generous deadlines: this runs last, on a loaded machine, after the other jobs' churn)
    cluster.create_job(ns, "served", {"config": CONFIG, "serve": {"replicas": 1}})
    (pod,) = wait_for(
        lambda: [
            p for p in cluster.pods(ns, 1, live=True) if p["metadata"]["name"].startswith("served-")
        ],
        timeout=120,
        what="the served job's worker",
    )
    node.run(pod)
    node.finish(pod, 0)
    deployments = f"apis/apps/v1/namespaces/{ns}/deployments"
    wait_for(lambda: cluster.items(deployments), timeout=120, what="the serving Deployment")
    cluster.patch_job(ns, "served", {"spec": {"serve": {"replicas": 2}}})
    wait_for(
        lambda: [d for d in cluster.items(deployments) if d["spec"]["replicas"] == 2],
        timeout=120,
        what="the serving Deployment scaled",
    )
    services = f"api/v1/namespaces/{ns}/services"
    cluster.patch_job(ns, "served", {"spec": {"serve": None}})
    wait_for(
        lambda: not cluster.items(deployments), timeout=120, what="the serving Deployment deleted"
    )
    wait_for(
        lambda: not [x for x in cluster.items(services) if x["metadata"]["name"] == "served-serve"],
        timeout=120,
        what="the serving Service deleted",
    )


def _pod_named(cluster: Cluster, ns: str, job: str) -> dict[str, Any]:
    """The first worker of `job` (after its PodGroup, if any)."""
    return wait_for(
        lambda: next(
            (
                p
                for p in cluster.pods(ns, 1, live=True)
                if p["metadata"]["name"] == f"{job}-a1-worker-0"
            ),
            None,
        ),
        what=f"{job}'s worker",
    )


def install_pod_group_crds(cluster: Cluster) -> None:
    """The gang schedulers' published CRDs (tests/operator/crds), so PodGroups are real."""
    crds = "apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if cluster.get(f"{crds}/{crd['metadata']['name']}") is None:
            cluster.post(crds, crd)


def chart_args(deployment: dict[str, Any], operator: OperatorProcess) -> list[str]:
    """The Deployment's rendered args, with this host's free ports."""
    args = list(deployment["spec"]["template"]["spec"]["containers"][0]["args"])
    args[args.index("--metrics-port") + 1] = str(free_port())
    args[args.index("--health-port") + 1] = str(free_port())
    return args


@pytest.mark.parametrize("scope", ["cluster", "namespace"])
def test_every_operator_request_is_authorized_by_the_chart(
    cluster: Cluster, node: NodeAgent, kube_tools: Any, tmp_path: Path, scope: str
) -> None:
    run = next(_runs)
    watched, release_ns = f"team-{scope}-{run}", f"audit-{scope}-{run}"
    cluster.create_namespace(watched)
    node.auto_run = False
    values: dict[str, Any] = {}
    if scope == "namespace":
        values = {"rbac.scope": "namespace", "watchNamespaces": [watched]}
    identity, objects = install_chart_rbac(
        cluster, kube_tools.helm, kube_tools.kubectl, release_ns, values, f"audit-{scope}-{run}"
    )
    (deployment,) = by_kind(objects, "Deployment")
    token = service_account_token(cluster, identity)
    kubeconfig = cluster.plane.token_kubeconfig(tmp_path / "kubeconfig", token)
    operator = OperatorProcess(kubeconfig, tmp_path, progress_port=free_port(), args=[])
    # The Lease's namespace is the pod's own (POD_NAMESPACE from the downward API there).
    operator.scope_args = chart_args(deployment, operator) + [
        "--leader-election-namespace",
        release_ns,
    ]
    install_pod_group_crds(cluster)
    operator.start()
    try:
        life_of_jobs(cluster, node, watched)
    finally:
        operator.stop()
        print(operator.logs()[-4000:])
    events = cluster.requests_by(identity.username)
    calls = {attrs for event in events if (attrs := rbac_attributes(event)) is not None}
    assert any(verb == "create" and resource == "pods" for _, resource, verb in calls), calls
    denied = sorted(
        f"{e['verb']} {e['requestURI']}"
        for e in events
        if (e.get("responseStatus") or {}).get("code") == 403
    )
    assert not denied, "the chart's RBAC denied:\n" + "\n".join(denied)
    # And the chart grants nothing the operator never does.
    granted = {
        (group, resource, verb)
        for role in by_kind(objects, "ClusterRole") + by_kind(objects, "Role")
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    unused = granted - calls - NOT_A_CALL
    assert not unused, f"granted but never used: {sorted(unused)}"
