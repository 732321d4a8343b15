"""Clean gang replacement (pure reconcile): a new gang starts only when the old one is gone.

The old gang's pods terminate gracefully (deletionTimestamp = deletion + grace period);
until the last is gone no pod of the new attempt exists, so the shared hostnames
(`<job>-worker-<rank>`, the rendezvous DNS names) and the checkpoint directory never
belong to two gangs at once. A pod still there long after its grace period (a lost node)
is force-deleted.
"""

from __future__ import annotations

from typing import Any

import pytest
from op_fixtures import after, condition, created_pods, deleted_pods, job, later, observed, pod, run

from finetune_operator.pod_facts import FORCE_DELETE_AFTER_SECONDS
from finetune_operator.reconcile import ChildRef, Observed


def running(spec: dict | None = None) -> tuple[dict, list[dict]]:
    body = job({"nodes": 2, **(spec or {})})
    body = after(body, run(body, Observed()))
    pods = [pod(body, 1, r, "Running", ip=f"10.0.0.{r + 1}") for r in range(2)]
    return after(body, run(body, observed(body, pods), later(1))), pods


def terminating(p: dict[str, Any], deadline_seconds: float) -> dict[str, Any]:
    """As the apiserver marks a pod deleted with a grace period: the deadline is stamped."""
    out = {**p, "metadata": dict(p["metadata"])}
    out["metadata"]["deletionTimestamp"] = later(deadline_seconds).strftime("%Y-%m-%dT%H:%M:%SZ")
    return out


def hostnames(pods: list[dict]) -> set[str]:
    return {p["spec"]["hostname"] for p in pods}


@pytest.mark.parametrize("cause", ["failure", "spec-change", "suspend-resume"])
def test_gang_replacement_waits_for_every_old_pod(cause):
    body, pods = running()
    if cause == "failure":
        pods[1] = pod(body, 1, 1, "Failed", exit_code=137)
    elif cause == "spec-change":
        for p in pods:  # built from an older spec
            p["metadata"].setdefault("annotations", {})["finetune.dev/spec-hash"] = "older"
    else:
        body["spec"]["runPolicy"] = {"suspend": True}
        body = after(body, run(body, observed(body, pods), later(2)))
        body["spec"]["runPolicy"] = {"suspend": False}
    d = run(body, observed(body, pods), later(5))
    assert created_pods(d) == []
    body = after(body, d)
    assert body["status"]["attempt"] == 2

    # The old pods terminate gracefully (grace period 120 s): still no new gang.
    old = [terminating(p, 125) for p in pods]
    for step, left in ((10, old), (60, old[:1])):
        d = run(body, observed(body, left), later(step))
        assert created_pods(d) == [], f"a new pod next to {len(left)} terminating one(s)"
        assert d.delete == [] and d.force_delete == []  # already being deleted
        wait = condition(d.status, "PodsReady")
        assert wait["reason"] == "WaitingForOldGang" and f"{len(left)} pod(s)" in wait["message"]
        body = after(body, d)

    # The last one is gone: the whole new gang at once, same hostnames as before.
    d = run(body, observed(body, []), later(70))
    new = created_pods(d)
    assert [p["metadata"]["name"] for p in new] == ["llama-a2-worker-0", "llama-a2-worker-1"]
    assert hostnames(new) == hostnames(pods)


def test_gang_replacement_force_deletes_a_pod_stuck_past_its_grace_period():
    body, pods = running()
    pods[1] = pod(body, 1, 1, "Failed", exit_code=137)
    body = after(body, run(body, observed(body, pods), later(5)))
    stuck = [terminating(pods[0], 125)]  # its node died: the kubelet never confirms
    d = run(body, observed(body, stuck), later(125 + FORCE_DELETE_AFTER_SECONDS - 1))
    assert d.force_delete == [] and created_pods(d) == []
    d = run(body, observed(body, stuck), later(125 + FORCE_DELETE_AFTER_SECONDS))
    assert d.force_delete == [ChildRef("Pod", "llama-a1-worker-0")]
    assert created_pods(d) == []  # still waiting until the API object is gone
    assert len(created_pods(run(after(body, d), observed(body, []), later(160)))) == 2


def test_gang_replacement_missing_rank_of_a_forming_gang_waits_for_stale_pods():
    body, pods = running()
    body = after(body, run(body, observed(body, [pods[0]]), later(5)))  # rank 1 vanished
    assert body["status"]["attempt"] == 2
    # Attempt 2 is not created while attempt 1's rank 0 terminates.
    d = run(body, observed(body, [terminating(pods[0], 100)]), later(6))
    assert created_pods(d) == [] and deleted_pods(d) == []
