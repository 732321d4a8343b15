"""Gang admission by the real Kueue (sigs.k8s.io/kueue, built by `make kube`) on the real
control plane: the operator's workers form Kueue plain-pod groups, Kueue's webhook gates
them, its controller makes one Workload per group and admits a whole gang at a time within
a ClusterQueue's quota; the real scheduler binds only admitted pods.

What is played (tests/kubeharness): the containers, by the node agent (`node.run`,
`node.finish`). The Kueue process is started once for this module (kubeharness/kueue.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from kubeharness.cluster import Cluster, wait_for
from kubeharness.control_plane import ControlPlane
from kubeharness.kueue import API, Kueue
from kubeharness.node_agent import NodeAgent
from kubeharness.operator_process import Identity, OperatorProcess

pytestmark = pytest.mark.slow

GATE = "kueue.x-k8s.io/admission"
FINALIZER = "kueue.x-k8s.io/managed"
JOBS = "apis/finetune.dev/v1alpha1"
KUEUE = f"apis/{API}"
CONFIG = {
    "base_model": "builtin:tiny-llama",
    "datasets": [{"path": "train.jsonl"}],
    "training": {"max_steps": 20},
}
_namespaces = itertools.count(1)


@pytest.fixture(scope="module")
def kueue(
    kube: ControlPlane, cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Kueue]:
    process = Kueue(kube, cluster, tmp_path_factory.mktemp("kueue")).start()
    yield process
    process.stop()


@pytest.fixture()
def kns(
    cluster: Cluster, kueue: Kueue, operator: OperatorProcess, node: NodeAgent
) -> Iterator[str]:
    """A namespace Kueue manages, with a LocalQueue `team-a` on a ClusterQueue that holds
    exactly one 2-worker gang (2 GPUs)."""
    node.auto_run = False
    name = f"kueue-{next(_namespaces)}"
    kueue.namespace(name)
    queue = f"{name}-cq"
    create_queues(cluster, name, queue)
    yield name
    print(f"----- operator log (tail) -----\n{operator.logs()[-5000:]}")
    print(f"----- kueue log (tail) -----\n{kueue.log()}")
    cluster.delete_jobs(name)
    wait_for(lambda: not (left := _left(cluster, name)) or print(left), 60, what=f"{name} empty")
    cluster.delete(f"api/v1/namespaces/{name}")
    cluster.delete(f"{KUEUE}/clusterqueues/{queue}")


def _left(cluster: Cluster, ns: str) -> list[str]:
    """What is left of the namespace's pods (name, phase, finalizers, being deleted)."""
    return [
        f"{p['metadata']['name']} {p['status'].get('phase')} {p['metadata'].get('finalizers')} "
        f"deleting={bool(p['metadata'].get('deletionTimestamp'))}"
        for p in cluster.pods(ns)
    ]


def create_queues(cluster: Cluster, ns: str, cluster_queue: str) -> None:
    if cluster.get(f"{KUEUE}/resourceflavors/default-flavor") is None:
        flavor = {
            "apiVersion": API,
            "kind": "ResourceFlavor",
            "metadata": {"name": "default-flavor"},
        }
        cluster.post(f"{KUEUE}/resourceflavors", flavor)
    quota = {"name": "nvidia.com/gpu", "nominalQuota": 2}
    cluster.post(
        f"{KUEUE}/clusterqueues",
        {
            "apiVersion": API,
            "kind": "ClusterQueue",
            "metadata": {"name": cluster_queue},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "resourceGroups": [
                    {
                        "coveredResources": ["nvidia.com/gpu"],
                        "flavors": [{"name": "default-flavor", "resources": [quota]}],
                    }
                ],
            },
        },
    )
    cluster.post(
        f"{KUEUE}/namespaces/{ns}/localqueues",
        {
            "apiVersion": API,
            "kind": "LocalQueue",
            "metadata": {"name": "team-a"},
            "spec": {"clusterQueue": cluster_queue},
        },
    )
    wait_for(lambda: _active(cluster, f"{KUEUE}/clusterqueues/{cluster_queue}"), what="CQ active")


def _active(cluster: Cluster, path: str) -> bool:
    conditions = ((cluster.get(path) or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Active" and c["status"] == "True" for c in conditions)


def create_job(cluster: Cluster, ns: str, name: str) -> None:
    body = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "labels": {"kueue.x-k8s.io/queue-name": "team-a"}},
        "spec": {"config": CONFIG, "nodes": 2, "resources": {"gpus": 1}},
    }
    cluster.post(f"{JOBS}/namespaces/{ns}/finetunejobs", body)


def pods_of(cluster: Cluster, ns: str, job: str, attempt: int = 1) -> list[dict[str, Any]]:
    return [
        p
        for p in cluster.pods(ns, attempt)
        if p["metadata"]["labels"].get("finetune.dev/job") == job
    ]


def gated(pod: dict[str, Any]) -> bool:
    return any(g["name"] == GATE for g in pod["spec"].get("schedulingGates") or [])


def condition(cluster: Cluster, ns: str, job: str, type_: str) -> dict[str, Any]:
    conditions = cluster.status(ns, job).get("conditions") or []
    return next((c for c in conditions if c["type"] == type_), {})


def workloads(cluster: Cluster, ns: str) -> dict[str, dict[str, Any]]:
    return {w["metadata"]["name"]: w for w in cluster.items(f"{KUEUE}/namespaces/{ns}/workloads")}


def admitted(workload: dict[str, Any]) -> bool:
    conditions = (workload.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Admitted" and c["status"] == "True" for c in conditions)


def wait_admitted(cluster: Cluster, node: NodeAgent, ns: str, job: str) -> list[dict[str, Any]]:
    """The job's gang is admitted: pods ungated and bound by the scheduler, condition set."""
    pods = wait_for(
        lambda: (
            (ps := pods_of(cluster, ns, job))
            and len(ps) == 2
            and all(not gated(p) and p["spec"].get("nodeName") == node.node_name for p in ps)
            and ps
        ),
        60,
        what=f"{job}'s gang ungated and bound",
    )
    wait_for(
        lambda: condition(cluster, ns, job, "Admitted").get("status") == "True",
        what=f"{job} Admitted",
    )
    assert condition(cluster, ns, job, "Queued")["status"] == "False"
    return pods


def assert_queued(cluster: Cluster, ns: str, job: str) -> None:
    wait_for(
        lambda: condition(cluster, ns, job, "Queued").get("status") == "True",
        what=f"{job} Queued",
    )
    assert condition(cluster, ns, job, "Queued")["reason"] == "WaitingForQuota"
    assert condition(cluster, ns, job, "Admitted")["status"] == "False"
    pods = pods_of(cluster, ns, job)
    assert len(pods) == 2
    for pod in pods:
        assert gated(pod), f"{pod['metadata']['name']} is not gated"
        assert not pod["spec"].get("nodeName"), f"{pod['metadata']['name']} was bound"


def test_kueue_admits_one_gang_at_a_time_within_quota(
    cluster: Cluster, node: NodeAgent, operator: OperatorProcess, kns: str
):
    create_job(cluster, kns, "first")
    create_job(cluster, kns, "second")
    both = wait_for(
        lambda: (
            (ps := pods_of(cluster, kns, "first") + pods_of(cluster, kns, "second"))
            and len(ps) == 4
            and ps
        ),
        what="both gangs created",
    )
    for pod in both:  # Kueue's webhook took every worker into a pod group
        meta = pod["metadata"]
        assert meta["labels"]["kueue.x-k8s.io/managed"] == "true"
        assert FINALIZER in meta.get("finalizers", [])
        assert meta["annotations"]["kueue.x-k8s.io/role-hash"]

    # One Workload per pod group, and exactly one of them admitted.
    found = wait_for(
        lambda: (
            (w := workloads(cluster, kns)) and len(w) == 2 and any(map(admitted, w.values())) and w
        ),
        60,
        what="two Workloads, one admitted",
    )
    assert set(found) == {"first-a1", "second-a1"}
    for workload in found.values():
        assert sum(ps["count"] for ps in workload["spec"]["podSets"]) == 2
    winners = [name for name, w in found.items() if admitted(w)]
    assert len(winners) == 1, winners
    first = winners[0].removesuffix("-a1")
    second = "second" if first == "first" else "first"

    pods = wait_admitted(cluster, node, kns, first)
    assert_queued(cluster, kns, second)
    assert not admitted(workloads(cluster, kns)[f"{second}-a1"])

    # The admitted gang runs and succeeds: its quota comes back, the queued gang goes.
    for pod in pods:
        node.run(pod)
    for pod in pods:
        node.finish(pod, exit_code=0)
    wait_for(lambda: cluster.status(kns, first).get("phase") == "Succeeded", what=f"{first} done")
    wait_admitted(cluster, node, kns, second)


def test_kueue_deleting_jobs_releases_quota_and_pods(
    cluster: Cluster,
    node: NodeAgent,
    operator: OperatorProcess,
    operator_identity: Identity,
    kns: str,
):
    create_job(cluster, kns, "first")
    wait_for(lambda: admitted(workloads(cluster, kns).get("first-a1") or {}), 60, what="first")
    pods = wait_admitted(cluster, node, kns, "first")
    for pod in pods:
        node.run(pod)
    create_job(cluster, kns, "second")
    wait_for(lambda: len(pods_of(cluster, kns, "second")) == 2, what="second's gang created")
    assert_queued(cluster, kns, "second")

    # Deleting the running job: its pods terminate, Kueue releases them (finalizer) and the
    # quota, and admits the queued gang.
    cluster.delete_job(kns, "first")
    wait_for(lambda: pods_of(cluster, kns, "first") == [], 60, what="first's pods gone")
    wait_admitted(cluster, node, kns, "second")

    # A job deleted while still queued goes too: gated pods are never stuck on Kueue.
    create_job(cluster, kns, "third")
    wait_for(lambda: len(pods_of(cluster, kns, "third")) == 2, what="third's gang created")
    assert_queued(cluster, kns, "third")
    cluster.delete_job(kns, "third")
    wait_for(lambda: pods_of(cluster, kns, "third") == [], 60, what="third's pods gone")
    wait_for(lambda: "third-a1" not in workloads(cluster, kns), 60, what="third's Workload gone")
    # The operator released it, with the chart's RBAC (never a 403).
    codes = {
        e["responseStatus"]["code"]
        for e in cluster.requests_by(operator_identity.username)
        if e["verb"] == "delete" and (e.get("objectRef") or {}).get("name") == "third-a1"
    }
    assert codes & {200, 202} and codes <= {200, 202, 404}, codes


def test_kueue_gang_replacement_is_admitted_as_a_new_group(
    cluster: Cluster, node: NodeAgent, operator: OperatorProcess, kns: str
):
    create_job(cluster, kns, "llama")
    pods = wait_admitted(cluster, node, kns, "llama")
    for pod in pods:
        node.run(pod)
    node.finish(pods[1], exit_code=137)  # a worker dies: the operator replaces the gang

    # Attempt 1's group finishes (not retriable in place), its pods are released and gone;
    # attempt 2 is a new pod group, admitted into the quota attempt 1 gave back.
    wait_for(lambda: pods_of(cluster, kns, "llama", 1) == [], 60, what="attempt 1 gone")
    new = wait_for(
        lambda: (ps := pods_of(cluster, kns, "llama", 2)) and len(ps) == 2 and ps,
        60,
        what="attempt 2 created",
    )
    assert {p["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] for p in new} == {"llama-a2"}
    wait_for(lambda: admitted(workloads(cluster, kns).get("llama-a2") or {}), 60, what="a2")
    wait_for(
        lambda: all(
            not gated(p) and p["spec"].get("nodeName") == node.node_name
            for p in pods_of(cluster, kns, "llama", 2)
        ),
        60,
        what="attempt 2 ungated and bound",
    )
    assert cluster.status(kns, "llama")["attempt"] == 2
