"""Gang health decisions: Kueue admission, startup problems, permanent failures, and the
wait for an old gang to be gone before a new one starts (pure, on a `Cycle`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from finetune_operator import pod_facts as pf
from finetune_operator import scheduling as g
from finetune_operator import startup as st
from finetune_operator import status as s
from finetune_operator.cycle import PERMANENT_FAILURE, PODS_READY, Cycle, elapsed, fail
from finetune_operator.failure_policy import log_tail, permanent_reason
from finetune_operator.redact import redact
from finetune_operator.spec.job import FineTuneJobSpec
from finetune_operator.spec.run_policy import RunPolicy


def wait_for_old_gang(cy: Cycle, left: int) -> None:
    cy.cond(
        PODS_READY,
        False,
        "WaitingForOldGang",
        f"Waiting for {left} pod(s) of the previous gang to terminate before starting "
        f"attempt {cy.status['attempt']}: no two gangs share hostnames or the checkpoints.",
    )


def permanent(cy: Cycle, policy: RunPolicy, failed: list[dict[str, Any]], lost: str | None) -> bool:
    """Fail the job when a failure must not be retried (restartPolicy, exit codes)."""
    if lost is not None and policy.restart_policy == "Never":
        fail(cy, PERMANENT_FAILURE, f"{lost}; spec.runPolicy.restartPolicy is Never.", policy)
        return True
    for pod in failed:
        why = permanent_reason(pod, policy.restart_policy)
        if why is None:
            continue
        message = f"{pf.describe_failure(pod)}. Not retried: {why}."
        tail = log_tail(cy.observed.logs.get(pf.name_of(pod)))
        if tail:
            message += f"\nLast log lines:\n{tail}"
        fail(cy, PERMANENT_FAILURE, message, policy)
        return True
    return False


def admission(cy: Cycle, current: list[dict[str, Any]], queue: str | None) -> None:
    """Queued/Admitted conditions for a job in a Kueue queue, from its pods' scheduling gates."""
    state = g.admission_state(current) if queue is not None else None
    if state == "Queued":
        message = f"Kueue holds the gang in queue {queue} until its quota admits all workers."
        cy.cond(s.QUEUED, True, "WaitingForQuota", message)
        cy.cond(s.ADMITTED, False, "WaitingForQuota", message)
    elif state == "Admitted":
        message = f"Kueue admitted the gang (queue {queue})."
        cy.cond(s.QUEUED, False, "Admitted", message)
        cy.cond(s.ADMITTED, True, "Admitted", message)


def startup_blocked(
    cy: Cycle, spec: FineTuneJobSpec, current: list[dict[str, Any]], missing: list[int]
) -> bool:
    """Track why workers cannot start; True when this cycle must not create anything
    (create backoff) or the job just failed (startup timeout)."""
    policy = spec.run_policy
    old = cy.status.get("startup") or {}
    problem, retries, retry_at = _startup_problem(cy, spec, current, missing, old)
    if problem is None:
        if cy.status.pop("startup", None) is not None:
            cy.cond(PODS_READY, False, "Starting", "The workers are starting.")
        return False
    since = s.parse_time(old.get("since")) or cy.now
    if elapsed(since, cy.now) >= policy.startup_timeout_seconds:
        cy.status.pop("startup", None)
        fail(
            cy,
            "StartupTimeout",
            f"The workers could not start for {policy.startup_timeout_seconds}s "
            f"(spec.runPolicy.startupTimeoutSeconds): {problem.reason}: {problem.message}",
            policy,
        )
        return True
    record: dict[str, Any] = {
        "reason": problem.reason,
        "message": redact(problem.message),
        "since": s.rfc3339(since),
    }
    blocked = False
    if problem.reason == st.CREATE_REJECTED and retry_at is not None:
        record |= {"retries": retries, "nextRetry": s.rfc3339(retry_at)}
        blocked = cy.now < retry_at
    _report_once(cy, problem, old, record)
    cy.status["startup"] = record
    cy.cond(PODS_READY, False, problem.reason, problem.message)
    if blocked:
        cy.decision.create = []
    return blocked


def _startup_problem(
    cy: Cycle,
    spec: FineTuneJobSpec,
    current: list[dict[str, Any]],
    missing: list[int],
    old: dict[str, Any],
) -> tuple[st.Problem | None, int, datetime | None]:
    """(what keeps the workers from starting, refused creates so far, next create retry)."""
    sched = spec.run_policy.scheduling_policy
    gang = sched is not None and sched.scheduler != "default"
    retries = int(old.get("retries") or 0)
    problem = st.rejection_problem(cy.observed.rejections)
    if problem is not None:
        return problem, retries + 1, st.next_retry(cy.now, retries + 1)
    pending = [p for p in current if pf.phase_of(p) == s.PENDING]
    problem = next((x for p in pending if (x := st.pod_problem(p, gang))), None)
    if problem is None and old.get("reason") == st.CREATE_REJECTED and missing:
        problem = st.Problem(st.CREATE_REJECTED, str(old.get("message") or ""))
    return problem, retries, s.parse_time(old.get("nextRetry"))


def _report_once(
    cy: Cycle, problem: st.Problem, old: dict[str, Any], record: dict[str, Any]
) -> None:
    """One event per reason, not one per cycle; a pod problem only once it persisted
    (a claim still binding makes a pod Unschedulable for a moment)."""
    same = old.get("reason") == problem.reason
    reported = bool(old.get("reported")) and same
    lasted = elapsed(s.parse_time(old.get("problemSince")) or cy.now, cy.now) if same else 0.0
    record["problemSince"] = (old.get("problemSince") if same else s.rfc3339(cy.now)) or (
        s.rfc3339(cy.now)
    )
    if not reported and (problem.reason == st.CREATE_REJECTED or lasted >= st.EVENT_AFTER_SECONDS):
        cy.event("Warning", problem.reason, problem.message)
        reported = True
    record["reported"] = reported
