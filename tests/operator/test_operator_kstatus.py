"""GitOps-facing status: kstatus conditions and observedGeneration on every cycle (pure).

`kstatus` below restates the rules of sigs.k8s.io/cli-utils/pkg/kstatus for a custom
resource (what Flux's `wait: true` and cli-utils use): a deletion or an unobserved
generation is InProgress, `Reconciling=True` is InProgress, `Stalled=True` is Failed,
anything else is Current.
"""

from __future__ import annotations

from typing import Any

from op_fixtures import after, condition, created_pods, gang, job, later, observed, run

from finetune_operator.reconcile import Observed


def kstatus(body: dict[str, Any]) -> str:
    meta, status = body["metadata"], body.get("status") or {}
    if meta.get("deletionTimestamp"):
        return "Terminating"
    observed_generation = status.get("observedGeneration")
    if observed_generation is not None and observed_generation != meta.get("generation"):
        return "InProgress"
    for cond in status.get("conditions") or []:
        if cond["type"] == "Reconciling" and cond["status"] == "True":
            return "InProgress"
        if cond["type"] == "Stalled" and cond["status"] == "True":
            return "Failed"
    return "Current"


def flags(status: dict[str, Any]) -> dict[str, str]:
    return {t: condition(status, t)["status"] for t in ("Ready", "Reconciling", "Stalled")}


def created() -> dict[str, Any]:
    body = job({"nodes": 2})
    return after(body, run(body, Observed()))


def succeeded() -> dict[str, Any]:
    body = created()
    body = after(body, run(body, observed(body, gang(body, 1, "Running", "Running"))))
    return after(body, run(body, observed(body, gang(body, 1, "Succeeded", "Succeeded")), later(9)))


def test_an_active_job_is_reconciling():
    body = created()
    assert body["status"]["phase"] == "Created"
    assert flags(body["status"]) == {"Ready": "False", "Reconciling": "True", "Stalled": "False"}
    reconciling = condition(body["status"], "Reconciling")
    assert reconciling["reason"] == "GangCreated"
    assert reconciling["message"] == "Created 2 worker pod(s) for attempt 1."
    assert kstatus(body) == "InProgress"

    running = after(body, run(body, observed(body, gang(body, 1, "Running", "Running")), later(5)))
    assert flags(running["status"])["Reconciling"] == "True"
    assert condition(running["status"], "Reconciling")["reason"] == "AllWorkersRunning"
    # lastTransitionTime moves only when the status flips, not when the reason changes.
    moved = condition(running["status"], "Reconciling")["lastTransitionTime"]
    assert moved == reconciling["lastTransitionTime"]
    assert kstatus(running) == "InProgress"


def test_a_succeeded_job_is_ready_and_current():
    body = succeeded()
    assert body["status"]["phase"] == "Succeeded"
    assert flags(body["status"]) == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}
    ready = condition(body["status"], "Ready")
    assert ready["reason"] == "AllWorkersSucceeded"
    assert ready["lastTransitionTime"] == "2025-01-01T12:00:09Z"
    assert kstatus(body) == "Current"


def test_a_failed_job_is_stalled_with_the_failure_reason():
    body = created()
    body["spec"]["runPolicy"] = {"backoffLimit": 0}
    failed_pods = gang(body, 1, "Running", "Failed")
    body = after(body, run(body, observed(body, failed_pods)))
    assert body["status"]["phase"] == "Failed"
    assert flags(body["status"]) == {"Ready": "False", "Reconciling": "False", "Stalled": "True"}
    stalled = condition(body["status"], "Stalled")
    assert stalled["reason"] == "BackoffLimitExceeded"
    assert stalled["message"] == condition(body["status"], "Failed")["message"]
    assert kstatus(body) == "Failed"


def test_an_invalid_spec_is_stalled():
    body = job({"nodes": 0})
    body = after(body, run(body, Observed()))
    assert condition(body["status"], "Stalled")["reason"] == "InvalidSpec"
    assert kstatus(body) == "Failed"


def test_a_suspended_job_is_current_but_not_ready():
    body = created()
    body["spec"]["runPolicy"] = {"suspend": True}
    body = after(body, run(body, observed(body, gang(body, 1, "Running", "Running"))))
    assert body["status"]["phase"] == "Suspended"
    assert flags(body["status"]) == {"Ready": "False", "Reconciling": "False", "Stalled": "False"}
    assert kstatus(body) == "Current"


def test_a_finished_job_still_observes_new_generations():
    """Argo CD and kstatus show Progressing/InProgress until observedGeneration catches up:
    an edit of a finished job must be observed, without running anything again."""
    body = succeeded()
    body["metadata"]["generation"] = 2
    body["spec"]["config"]["training"]["max_steps"] = 99
    assert kstatus(body) == "InProgress"
    pods = gang(body, 1, "Succeeded", "Succeeded")
    d = run(body, observed(body, pods), later(60))
    assert d.status["observedGeneration"] == 2
    assert d.status["phase"] == "Succeeded"
    assert created_pods(d) == [] and d.events == [] and d.delete == []
    assert kstatus(after(body, d)) == "Current"


def test_a_failed_job_observes_a_runpolicy_edit_without_retrying():
    body = created()
    body["spec"]["runPolicy"] = {"backoffLimit": 0}
    body = after(body, run(body, observed(body, gang(body, 1, "Failed", "Running"))))
    body["metadata"]["generation"] = 3
    body["spec"]["runPolicy"]["ttlSecondsAfterFinished"] = 3600
    d = run(body, observed(body, gang(body, 1, "Failed", "Succeeded")), later(30))
    assert d.status["observedGeneration"] == 3
    assert d.status["phase"] == "Failed" and created_pods(d) == []
    assert kstatus(after(body, d)) == "Failed"
