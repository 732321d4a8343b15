"""The real operator process killed in the middle of creating a gang, and GitOps status e2e.

Real: the `finetune-operator` process (SIGKILLed and restarted) on the real control plane.
The kill is exact: a validating admission webhook (kubeharness.webhook) kills the operator
the moment the apiserver admits the second pod POST of the gang, then allows it: the first
worker exists and was acknowledged, the second is in flight from a client that is gone (the
apiserver may store it or abort it with the client's context; either is fine). Played: the
pods' containers (the node agent reports their phases when the test says so).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubeharness.cluster import Cluster, wait_for
from kubeharness.control_plane import ControlPlane
from kubeharness.node_agent import NodeAgent
from kubeharness.operator_process import OperatorProcess
from kubeharness.webhook import AdmissionTrap

pytestmark = pytest.mark.slow

CONFIG = {
    "base_model": "builtin:tiny-llama",
    "datasets": [{"path": "train.jsonl"}],
    "training": {"max_steps": 20},
}


def phase(cluster: Cluster, ns: str, name: str) -> str | None:
    return cluster.status(ns, name).get("phase")


def conditions(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status.get("conditions", [])}


@pytest.fixture()
def restarted_operator(operator: OperatorProcess) -> Iterator[OperatorProcess]:
    """The module's operator, alive again after the test whatever happened."""
    yield operator
    if operator.proc is None or operator.proc.poll() is not None:
        operator.start()


def test_operator_killed_mid_gang_creation_never_duplicates(
    kube: ControlPlane,
    cluster: Cluster,
    node: NodeAgent,
    restarted_operator: OperatorProcess,
    ns: str,
):
    operator = restarted_operator
    kubelet = node
    fired = threading.Event()
    posts: list[str] = []

    def kill_operator(request: dict[str, Any]) -> None:
        posts.append(request["name"] or request["object"]["metadata"]["name"])
        if len(posts) == 2 and operator.proc is not None:
            operator.proc.kill()
            operator.proc.wait(10)
            fired.set()

    with AdmissionTrap(kube, cluster, ns, kill_operator):
        cluster.create_job(ns, "big", {"config": CONFIG, "nodes": 4})
        wait_for(fired.is_set, timeout=60, what="the operator's second pod POST")
    assert operator.proc is not None and operator.proc.returncode == -9
    assert posts == ["big-a1-worker-0", "big-a1-worker-1"]

    # Killed during the second pod's POST: the first exists, the last two do not.
    made = [p["metadata"]["name"] for p in cluster.pods(ns)]
    assert made in (["big-a1-worker-0"], ["big-a1-worker-0", "big-a1-worker-1"]), made
    assert cluster.status(ns, "big")["attempt"] == 1  # the status was written first

    operator.start()
    pods = wait_for(
        lambda: (found := cluster.pods(ns)) and len(found) == 4 and found,
        what="the gang completed by the restarted operator",
    )
    assert [p["metadata"]["name"] for p in pods] == [f"big-a1-worker-{r}" for r in range(4)]
    ranks = collections.Counter(p["metadata"]["labels"]["finetune.dev/rank"] for p in pods)
    assert ranks == {"0": 1, "1": 1, "2": 1, "3": 1}
    assert set(cluster.creations("pods", ns).values()) == {1}
    assert cluster.creations("configmaps", ns) == {"big-config": 1}
    assert cluster.creations("services", ns) == {"big": 1}
    assert cluster.creations("persistentvolumeclaims", ns) == {"big-checkpoints": 1}

    # The job proceeds: the gang runs and finishes on the restarted operator.
    for pod in pods:
        kubelet.run(pod)
    wait_for(lambda: phase(cluster, ns, "big") == "Running", what="big Running")
    for pod in pods:
        kubelet.finish(pod)
    wait_for(lambda: phase(cluster, ns, "big") == "Succeeded", what="big Succeeded")
    status = cluster.status(ns, "big")
    assert status["attempt"] == 1 and status["restarts"] == 0
    assert set(cluster.creations("pods", ns).values()) == {1}


def test_gitops_status_through_a_job_life_and_an_edit_after_it_finished(
    cluster: Cluster, node: NodeAgent, ns: str
):
    """kstatus conditions follow the phase, and observedGeneration keeps up even after the
    job finished (Argo CD and Flux would otherwise wait forever)."""
    cluster.create_job(ns, "gitops", {"config": CONFIG})
    (pod,) = wait_for(lambda: cluster.pods(ns), what="the worker")
    created = cluster.status(ns, "gitops")
    assert conditions(created)["Reconciling"] == "True" and conditions(created)["Ready"] == "False"
    node.run(pod)
    wait_for(lambda: phase(cluster, ns, "gitops") == "Running")
    node.finish(pod)
    wait_for(lambda: phase(cluster, ns, "gitops") == "Succeeded")
    done = cluster.status(ns, "gitops")
    assert {k: conditions(done)[k] for k in ("Ready", "Reconciling", "Stalled")} == {
        "Ready": "True",
        "Reconciling": "False",
        "Stalled": "False",
    }

    edited = cluster.patch_job(ns, "gitops", {"spec": {"config": {"training": {"max_steps": 9}}}})
    assert edited["metadata"]["generation"] == 2
    wait_for(
        lambda: cluster.status(ns, "gitops").get("observedGeneration") == 2,
        what="observedGeneration of the edited, finished job",
    )
    after = cluster.status(ns, "gitops")
    assert after["phase"] == "Succeeded" and conditions(after)["Ready"] == "True"
    assert [p["metadata"]["name"] for p in cluster.pods(ns)] == ["gitops-a1-worker-0"]
