"""The real operator process killed in the middle of creating a gang, and GitOps status e2e.

Real: the `finetune-operator` process (SIGKILLed and restarted) against kmock's emulator.
Played: the kubelet (op_harness.Kubelet moves pod phases; it is paused, so pods stay
Pending while the operator dies). The kill is exact: the emulator itself kills the
operator the moment the first pod POST of the gang arrives, before answering it.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from op_harness import Cluster, Kubelet, Operator, wait_for

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


class KillOnFirstPodPost:
    """Wraps the emulator's request handler: SIGKILL the operator when it POSTs the first
    pod in `ns`, then let the emulator serve that POST (the operator never sees the answer)."""

    def __init__(self, cluster: Cluster, operator: Operator, ns: str) -> None:
        assert cluster.server is not None
        self.server = cluster.server
        self.operator = operator
        self.path = f"/api/v1/namespaces/{ns}/pods"
        self.fired = threading.Event()
        self.original = self.server._handle

    async def _handle(self, request: Any) -> Any:
        first = not self.fired.is_set() and self.operator.proc is not None
        if first and request.method == "POST" and request.url.path == self.path:
            assert self.operator.proc is not None
            self.operator.proc.kill()
            self.operator.proc.wait(10)
            self.fired.set()
        return await self.original(request)

    def __enter__(self) -> KillOnFirstPodPost:
        self.server._handle = self._handle  # the instance attribute shadows the method
        return self

    def __exit__(self, *exc: object) -> None:
        del self.server._handle


@pytest.fixture()
def restarted_operator(operator: Operator) -> Iterator[Operator]:
    """The module's operator, alive again after the test whatever happened."""
    yield operator
    if operator.proc is None or operator.proc.poll() is not None:
        operator.start()


def test_operator_killed_mid_gang_creation_never_duplicates(
    cluster: Cluster, kubelet: Kubelet, restarted_operator: Operator, ns: str
):
    operator = restarted_operator
    with KillOnFirstPodPost(cluster, operator, ns) as trap:
        cluster.create_job(ns, "big", {"config": CONFIG, "nodes": 4})
        wait_for(trap.fired.is_set, timeout=60, what="the operator's first pod POST")
    assert operator.proc is not None and operator.proc.returncode == -9

    # Killed between the first and the second pod: one worker exists, the rest do not.
    assert [p["metadata"]["name"] for p in cluster.pods(ns)] == ["big-a1-worker-0"]
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
    cluster: Cluster, kubelet: Kubelet, ns: str
):
    """kstatus conditions follow the phase, and observedGeneration keeps up even after the
    job finished (Argo CD and Flux would otherwise wait forever)."""
    cluster.create_job(ns, "gitops", {"config": CONFIG})
    (pod,) = wait_for(lambda: cluster.pods(ns), what="the worker")
    created = cluster.status(ns, "gitops")
    assert conditions(created)["Reconciling"] == "True" and conditions(created)["Ready"] == "False"
    kubelet.run(pod)
    wait_for(lambda: phase(cluster, ns, "gitops") == "Running")
    kubelet.finish(pod)
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
