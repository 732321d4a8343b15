"""An active job as a state machine: one small function per situation, read as a table.

`run_active` observes the gang and walks `SITUATIONS` in order; the first situation that
applies decides the cycle (returns True). Every situation is pure: it only writes the
Cycle (status, conditions, events, children to create or delete).
"""

from __future__ import annotations

from collections.abc import Callable

from finetune_operator import gang_health as gh
from finetune_operator import manifests as m
from finetune_operator import pod_facts as pf
from finetune_operator import status as s
from finetune_operator.cycle import PODS_READY, TERMINAL, Cycle, complete, elapsed, fail
from finetune_operator.gang import (
    Gang,
    create_workers,
    ensure_children,
    observe_gang,
    replace_gang,
    set_workers,
)
from finetune_operator.parsed import CheckedJob
from finetune_operator.pod_parts import PodSettings


def suspended(cy: Cycle, gang: Gang) -> bool:
    """spec.runPolicy.suspend: stop the workers; the job waits, Suspended."""
    if not gang.spec.run_policy.suspend:
        return False
    for pod in gang.current:
        cy.delete_pod(pod)
    if cy.phase != s.SUSPENDED:
        cy.event("Normal", s.SUSPENDED, f"Job suspended: stopping {len(gang.current)} worker(s).")
    cy.status["phase"] = s.SUSPENDED
    cy.cond(s.SUSPENDED, True, "Suspended", "spec.runPolicy.suspend is true.")
    cy.uncond(s.RUNNING, "Suspended", "The job is suspended.")
    cy.uncond(s.RESTARTING, "Suspended", "The job is suspended.")
    cy.status.pop("startTime", None)
    set_workers(cy, [])
    return True


def starting(cy: Cycle, gang: Gang) -> bool:
    """The first attempt, a resumed job, or a spec fixed after InvalidSpec: a new gang."""
    resumed = cy.phase == s.SUSPENDED
    if not (resumed or gang.attempt == 0 or gang.fresh):
        return False
    made = replace_gang(cy, gang, stop_current=False)
    cy.status["phase"] = s.CREATED
    cy.status["startTime"] = s.rfc3339(cy.now)
    message = (
        f"Created {gang.spec.nodes} worker pod(s) for attempt {gang.attempt}."
        if made
        else f"Attempt {gang.attempt} starts once the previous gang's pods are gone."
    )
    cy.cond(s.CREATED, True, "GangCreated", message)
    if resumed:
        cy.cond(s.SUSPENDED, False, "Resumed", "spec.runPolicy.suspend is false.")
        cy.event("Normal", "Resumed", f"Job resumed: {message}")
    else:
        cy.event("Normal", s.CREATED, message)
    return True


def past_deadline(cy: Cycle, gang: Gang) -> bool:
    """spec.runPolicy.activeDeadlineSeconds passed since startTime: the job fails."""
    limit = gang.spec.run_policy.active_deadline_seconds
    started = s.parse_time(cy.status.get("startTime"))
    if started is None:
        cy.status["startTime"] = s.rfc3339(cy.now)
        return False
    if limit is None or elapsed(started, cy.now) < limit:
        return False
    set_workers(cy, gang.current)
    fail(
        cy,
        "DeadlineExceeded",
        f"The job ran longer than spec.runPolicy.activeDeadlineSeconds ({limit}s).",
        gang.spec.run_policy,
    )
    return True


def record_progress(cy: Cycle, gang: Gang) -> bool:
    """Rank 0's progress into status.progress (never decides the cycle)."""
    if cy.observed.progress is not None:
        progress = s.progress_status(cy.observed.progress)
        if progress is not None:
            cy.status["progress"] = progress
    return False


def spec_changed(cy: Cycle, gang: Gang) -> bool:
    """The job was edited: run what it asks for now (a new attempt, not a failure restart)."""
    outdated = [
        p
        for p in gang.current
        if pf.phase_of(p) not in TERMINAL and pf.spec_hash_of(p) not in (None, cy.digest)
    ]
    if not outdated:
        return False
    replace_gang(cy, gang)
    message = (
        f"The spec changed: replacing the gang with attempt {gang.attempt} "
        f"({gang.spec.nodes} worker(s)), resuming from the newest checkpoint."
    )
    cy.status["phase"] = s.CREATED
    cy.cond(s.CREATED, True, "SpecChanged", message)
    cy.uncond(s.RUNNING, "SpecChanged", "The gang is being replaced.")
    cy.event("Normal", "SpecChanged", message)
    return True


def worker_failed(cy: Cycle, gang: Gang) -> bool:
    """A worker failed, or vanished while running: restart the gang within backoffLimit,
    unless the failure is permanent (restartPolicy, the runtime's user-error codes)."""
    failed, missing = gang.in_phase(s.FAILED), gang.missing
    lost = bool(missing) and cy.phase == s.RUNNING
    if not (failed or lost):
        return False
    if failed:
        why = "; ".join(pf.describe_failure(p) for p in failed)
    else:
        why = f"worker(s) {', '.join(map(str, missing))} of attempt {gang.attempt} disappeared"
    policy = gang.spec.run_policy
    restarts = int(cy.status.get("restarts") or 0)
    set_workers(cy, gang.current)
    if gh.permanent(cy, policy, failed, why if lost else None):
        return True
    if restarts >= policy.backoff_limit:
        fail(
            cy,
            "BackoffLimitExceeded",
            f"{why}. The gang was restarted {restarts} time(s); "
            f"spec.runPolicy.backoffLimit is {policy.backoff_limit}.",
            policy,
        )
        return True
    replace_gang(cy, gang)
    cy.status["restarts"] = restarts + 1
    cy.status["phase"] = s.RESTARTING
    message = (
        f"{why}. Replacing the gang: attempt {gang.attempt} "
        f"(restart {restarts + 1} of {policy.backoff_limit}), resuming from the newest "
        "checkpoint."
    )
    cy.cond(s.RESTARTING, True, "WorkerFailed", message)
    cy.uncond(s.RUNNING, "WorkerFailed", "A worker failed; the gang is being replaced.")
    cy.event("Warning", s.RESTARTING, message)
    return True


def all_succeeded(cy: Cycle, gang: Gang) -> bool:
    """Every worker exited 0: Succeeded (rank 0 exits 0 only after its uploads)."""
    nodes = gang.spec.nodes
    if len(gang.in_phase(s.SUCCEEDED)) != nodes:
        return False
    set_workers(cy, gang.current)
    policy = gang.spec.run_policy
    complete(cy, s.SUCCEEDED, "AllWorkersSucceeded", f"All {nodes} worker(s) succeeded.", policy)
    if cy.outputs is not None:
        cy.status["outputs"] = cy.outputs
    progress = cy.status.get("progress")
    if isinstance(progress, dict):  # the last poll may predate the final step
        progress.update({"percent": 100.0, "state": "completed"})
        progress.pop("eta", None)
    cy.event("Normal", s.SUCCEEDED, f"Training finished: all {nodes} worker(s) succeeded.")
    return True


def startup_blocked(cy: Cycle, gang: Gang) -> bool:
    """Workers cannot start (refused creates, Unschedulable, image pulls): create backoff,
    or StartupTimeout (see gang_health.startup_blocked)."""
    return gh.startup_blocked(cy, gang.spec, gang.current, gang.missing)


def forming(cy: Cycle, gang: Gang) -> bool:
    """(Re)create absent workers (after the old gang is gone); Running once all run."""
    missing, nodes = gang.missing, gang.spec.nodes
    if missing and gang.stale:  # a replacement gang: wait until the old one is gone
        gh.wait_for_old_gang(cy, len(gang.stale))
        missing = []
    elif missing:  # the gang is still forming
        create_workers(cy, gang, missing)
    running, succeeded = gang.in_phase(s.RUNNING), gang.in_phase(s.SUCCEEDED)
    if missing == [] and len(running) + len(succeeded) == nodes and running:
        if cy.phase != s.RUNNING:
            cy.event("Normal", s.RUNNING, f"All {nodes} worker(s) of attempt {gang.attempt} run.")
        cy.status["phase"] = s.RUNNING
        message = f"All {nodes} worker(s) of attempt {gang.attempt} are running."
        cy.cond(s.RUNNING, True, "AllWorkersRunning", message)
        cy.cond(PODS_READY, True, "AllWorkersRunning", message)
        cy.uncond(s.RESTARTING, "AllWorkersRunning", message)
    elif cy.phase not in (s.CREATED, s.RESTARTING, s.RUNNING):
        cy.status["phase"] = s.CREATED
    set_workers(cy, gang.current, created=len(missing))
    return True


Situation = Callable[[Cycle, Gang], bool]

# In order; the first that applies decides the cycle.
SITUATIONS: tuple[Situation, ...] = (
    suspended,  # runPolicy.suspend          -> stop the workers, Suspended
    starting,  # first / resumed / fixed     -> a new gang, Created
    past_deadline,  # activeDeadlineSeconds  -> Failed (DeadlineExceeded)
    record_progress,  # (always falls through) rank 0's progress into status
    spec_changed,  # the job was edited      -> replace the gang, Created
    worker_failed,  # a worker failed / lost -> restart (Restarting) or Failed
    all_succeeded,  # every worker exited 0  -> Succeeded
    startup_blocked,  # cannot start         -> backoff, or Failed (StartupTimeout)
    forming,  # otherwise                    -> create absent workers; Running once all run
)


def run_active(
    cy: Cycle,
    job: CheckedJob,
    settings: PodSettings,
    queue: str | None,
    fresh: bool = False,
) -> None:
    """One cycle of an active (not finished) job with a valid spec."""
    cy.digest = m.spec_hash(job.spec, job.config_yaml)
    cy.status.setdefault("restarts", 0)
    if not ensure_children(cy, job, settings.progress_port):
        return
    gang = observe_gang(cy, job.spec, settings, queue, fresh)
    gh.admission(cy, gang.current, queue)
    for situation in SITUATIONS:
        if situation(cy, gang):
            return
