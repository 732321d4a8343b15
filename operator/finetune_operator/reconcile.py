"""The reconciler: (job, observed children, now) -> actions + new status. No I/O here.

Everything the kopf shell does follows from `reconcile`'s `Decision`: patch the status
(first, so an interrupted cycle is recomputed from a recorded attempt), delete children,
create/update children, post events, delete the job. Running it again on the same
observations yields the same decision, so an operator restart never duplicates pods.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from finetune_operator import gang_health as gh
from finetune_operator import manifests as m
from finetune_operator import scheduling as g
from finetune_operator import serving
from finetune_operator import status as s
from finetune_operator.cycle import (
    INVALID_SPEC,
    PERMANENT_FAILURE,
    PODS_READY,
    TERMINAL,
    ChildRef,
    Cycle,
    Decision,
    Event,
    Observed,
    clean_pods,
    complete,
    elapsed,
    fail,
)
from finetune_operator.effective import effective_config_yaml
from finetune_operator.spec import FineTuneJobSpec, RunPolicy, SpecError, validate_job

__all__ = [
    "INVALID_SPEC",
    "PERMANENT_FAILURE",
    "TERMINAL",
    "ChildRef",
    "Decision",
    "Event",
    "Observed",
    "reconcile",
]


def reconcile(
    job: dict[str, Any], observed: Observed, now: datetime, settings: m.PodSettings
) -> Decision:
    """Decide what to do about one FineTuneJob. Pure: same inputs, same decision."""
    cy = Cycle(job, observed, now)
    meta = job.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return Decision(status=cy.old)  # garbage collection removes the children

    generation = meta.get("generation")
    was_invalid = (
        cy.phase == s.FAILED
        and (s.get_condition(cy.conditions, s.FAILED) or {}).get("reason") == INVALID_SPEC
    )
    retry_invalid = was_invalid and cy.old.get("observedGeneration") != generation
    if generation is not None:  # every cycle, finished jobs too (GitOps tools wait on it)
        cy.status["observedGeneration"] = generation
    if cy.phase in TERMINAL and not retry_invalid:
        _serving(cy, settings)
        _finished(cy, _run_policy(job))
        return cy.finish()
    try:
        valid = validate_job(job)
        source = f"FineTuneJob {cy.ref.namespace}/{cy.ref.name} spec.config"
        config_yaml = effective_config_yaml(valid.config, valid.spec, source)
    except SpecError as exc:
        fail(cy, INVALID_SPEC, str(exc), _run_policy(job))
        return cy.finish()
    cy.outputs = s.outputs_status(valid.spec.output, valid.config.adapter)
    if retry_invalid:  # the user fixed the spec: start over with a fresh gang
        cy.status.pop("completionTime", None)
        cy.uncond(s.FAILED, "SpecFixed", "The spec is valid again.")
        cy.status["phase"] = s.PENDING
    _active(cy, valid.spec, config_yaml, settings, fresh=retry_invalid)
    _serving(cy, settings)
    return cy.finish()


def _serving(cy: Cycle, settings: m.PodSettings) -> None:
    """spec.serve: inference replicas of a Succeeded job (see finetune_operator.serving);
    removed again when spec.serve is."""
    raw = cy.job.get("spec")
    if cy.phase != s.SUCCEEDED:
        return
    if not isinstance(raw, dict) or not raw.get("serve"):
        name = serving.serving_name(cy.ref)
        if cy.observed.serving is not None:
            cy.decision.delete.append(ChildRef("Deployment", name))
        if cy.observed.serving_service is not None:
            cy.decision.delete.append(ChildRef("Service", name))
        cy.status.pop("serving", None)
        return
    try:
        spec = validate_job(cy.job).spec
    except SpecError:
        return
    decided = serving.decide(
        cy.ref, spec, cy.status, cy.observed.serving, cy.observed.serving_service, settings
    )
    cy.decision.create += decided.create
    cy.decision.update += decided.update
    if decided.status is not None:
        cy.status["serving"] = decided.status


def _run_policy(job: dict[str, Any]) -> RunPolicy:
    """The run policy even when the rest of the spec is invalid (defaults if it is too)."""
    spec = job.get("spec")
    raw = (spec.get("runPolicy") if isinstance(spec, dict) else None) or {}
    try:
        return RunPolicy.model_validate(raw)
    except Exception:  # noqa: BLE001 - an invalid runPolicy falls back to the defaults
        return RunPolicy()


# ------------------------------------------------------------------------------- terminal


def _finished(cy: Cycle, policy: RunPolicy) -> None:
    """A finished job: apply cleanPodPolicy (idempotently) and the TTL."""
    clean_pods(cy, policy)
    if policy.ttl_seconds_after_finished is not None:
        done = s.parse_time(cy.status.get("completionTime"))
        if done is not None and elapsed(done, cy.now) >= policy.ttl_seconds_after_finished:
            cy.decision.delete_job = True
            cy.event(
                "Normal",
                "TTLExpired",
                f"Deleting the job {policy.ttl_seconds_after_finished}s after it finished.",
            )


# --------------------------------------------------------------------------------- active


def _ensure_children(cy: Cycle, spec: FineTuneJobSpec, config_yaml: str, port: int) -> bool:
    """Create/refresh ConfigMap, Service and PVC; False if the workers cannot start yet."""
    obs, ref = cy.observed, cy.ref
    wanted = m.config_map(ref, config_yaml)
    if obs.config_map is None:
        cy.decision.create.append(wanted)
    elif (obs.config_map.get("data") or {}) != wanted["data"]:
        cy.decision.update.append(wanted)
    if obs.service is None:
        cy.decision.create.append(m.service(ref, port))
    group = m.pod_group(ref, spec)
    if group is not None and obs.pod_group is None:
        cy.decision.create.append(group)
    if spec.storage.existing_claim is None:
        if obs.claim is None:
            cy.decision.create.append(m.pvc(ref, spec))
        return True
    if obs.claim is None:
        message = (
            f"PersistentVolumeClaim {spec.storage.existing_claim!r} (spec.storage.existingClaim) "
            f"does not exist in namespace {ref.namespace}: create it or drop existingClaim."
        )
        if (
            cy.phase != s.PENDING
            or (s.get_condition(cy.conditions, s.CREATED) or {}).get("message") != message
        ):
            cy.event("Warning", "ClaimNotFound", message)
        cy.status["phase"] = s.PENDING
        cy.cond(s.CREATED, False, "ClaimNotFound", message)
        return False
    return True


def _create_workers(
    cy: Cycle, spec: FineTuneJobSpec, attempt: int, ranks: list[int], settings: m.PodSettings
) -> None:
    existing = {s.pod_name(p) for p in cy.observed.pods}
    queue = g.kueue_queue((cy.job.get("metadata") or {}).get("labels"))
    for rank in ranks:
        pod = m.worker_pod(cy.ref, spec, attempt, rank, settings, cy.digest, queue)
        if pod["metadata"]["name"] not in existing:
            cy.decision.create.append(pod)


def _new_gang(cy: Cycle, spec: FineTuneJobSpec, attempt: int, settings: m.PodSettings) -> int:
    """Start gang `attempt`: now if no pod of an older gang is left, else once they are gone
    (the same hostnames, the same checkpoint directory). Returns the pods created."""
    cy.status["attempt"] = attempt
    cy.status.pop("startup", None)  # a new gang starts with a clean slate
    if cy.observed.pods:
        gh.wait_for_old_gang(cy, len(cy.observed.pods))
        return 0
    _create_workers(cy, spec, attempt, list(range(spec.nodes)), settings)
    return spec.nodes


def _active(
    cy: Cycle,
    spec: FineTuneJobSpec,
    config_yaml: str,
    settings: m.PodSettings,
    fresh: bool = False,
) -> None:
    policy = spec.run_policy
    cy.digest = m.spec_hash(spec, config_yaml)
    cy.status.setdefault("restarts", 0)
    if not _ensure_children(cy, spec, config_yaml, settings.progress_port):
        return

    attempt = max(
        [int(cy.status.get("attempt") or 0)] + [s.pod_attempt(p) for p in cy.observed.pods]
    )
    cy.status["attempt"] = attempt
    stale = [p for p in cy.observed.pods if s.pod_attempt(p) != attempt]
    for pod in stale:  # leftovers of replaced gangs
        cy.retire_pod(pod)
    current = [p for p in cy.observed.pods if s.pod_attempt(p) == attempt and not s.terminating(p)]
    gh.admission(cy, current)

    if policy.suspend:
        for pod in current:
            cy.delete_pod(pod)
        if cy.phase != s.SUSPENDED:
            cy.event("Normal", s.SUSPENDED, f"Job suspended: stopping {len(current)} worker(s).")
        cy.status["phase"] = s.SUSPENDED
        cy.cond(s.SUSPENDED, True, "Suspended", "spec.runPolicy.suspend is true.")
        cy.uncond(s.RUNNING, "Suspended", "The job is suspended.")
        cy.uncond(s.RESTARTING, "Suspended", "The job is suspended.")
        cy.status.pop("startTime", None)
        _workers(cy, [])
        return

    if cy.phase == s.SUSPENDED or attempt == 0 or fresh:
        resumed = cy.phase == s.SUSPENDED
        attempt += 1
        made = _new_gang(cy, spec, attempt, settings)
        cy.status["phase"] = s.CREATED
        cy.status["startTime"] = s.rfc3339(cy.now)
        message = (
            f"Created {spec.nodes} worker pod(s) for attempt {attempt}."
            if made
            else f"Attempt {attempt} starts once the previous gang's pods are gone."
        )
        cy.cond(s.CREATED, True, "GangCreated", message)
        if resumed:
            cy.cond(s.SUSPENDED, False, "Resumed", "spec.runPolicy.suspend is false.")
            cy.event("Normal", "Resumed", f"Job resumed: {message}")
        else:
            cy.event("Normal", s.CREATED, message)
        _workers(cy, [], created=made)
        return

    started = s.parse_time(cy.status.get("startTime"))
    if started is None:
        cy.status["startTime"] = s.rfc3339(cy.now)
    elif (
        policy.active_deadline_seconds is not None
        and elapsed(started, cy.now) >= policy.active_deadline_seconds
    ):
        _workers(cy, current)
        fail(
            cy,
            "DeadlineExceeded",
            f"The job ran longer than spec.runPolicy.activeDeadlineSeconds "
            f"({policy.active_deadline_seconds}s).",
            policy,
        )
        return

    _progress(cy)
    outdated = [
        p
        for p in current
        if s.pod_phase(p) not in TERMINAL and s.pod_spec_hash(p) not in (None, cy.digest)
    ]
    if outdated:  # the job was edited: run what it asks for now (not a failure restart)
        for pod in current:
            cy.delete_pod(pod)
        attempt += 1
        message = (
            f"The spec changed: replacing the gang with attempt {attempt} "
            f"({spec.nodes} worker(s)), resuming from the newest checkpoint."
        )
        cy.status["phase"] = s.CREATED
        cy.cond(s.CREATED, True, "SpecChanged", message)
        cy.uncond(s.RUNNING, "SpecChanged", "The gang is being replaced.")
        cy.event("Normal", "SpecChanged", message)
        _workers(cy, [], created=_new_gang(cy, spec, attempt, settings))
        return

    failed = [p for p in current if s.pod_phase(p) == s.FAILED]
    succeeded = [p for p in current if s.pod_phase(p) == s.SUCCEEDED]
    running = [p for p in current if s.pod_phase(p) == s.RUNNING]
    ranks = {s.pod_rank(p) for p in current}
    missing = [rank for rank in range(spec.nodes) if rank not in ranks]
    lost = bool(missing) and cy.phase == s.RUNNING

    if failed or lost:
        if failed:
            why = "; ".join(s.describe_failure(p) for p in failed)
        else:
            why = f"worker(s) {', '.join(map(str, missing))} of attempt {attempt} disappeared"
        restarts = int(cy.status.get("restarts") or 0)
        _workers(cy, current)
        if gh.permanent(cy, policy, failed, why if lost else None):
            return
        if restarts >= policy.backoff_limit:
            fail(
                cy,
                "BackoffLimitExceeded",
                f"{why}. The gang was restarted {restarts} time(s); "
                f"spec.runPolicy.backoffLimit is {policy.backoff_limit}.",
                policy,
            )
            return
        for pod in current:
            cy.delete_pod(pod)
        attempt += 1
        cy.status["restarts"] = restarts + 1
        cy.status["phase"] = s.RESTARTING
        message = (
            f"{why}. Replacing the gang: attempt {attempt} "
            f"(restart {restarts + 1} of {policy.backoff_limit}), resuming from the newest "
            "checkpoint."
        )
        cy.cond(s.RESTARTING, True, "WorkerFailed", message)
        cy.uncond(s.RUNNING, "WorkerFailed", "A worker failed; the gang is being replaced.")
        cy.event("Warning", s.RESTARTING, message)
        _workers(cy, [], created=_new_gang(cy, spec, attempt, settings))
        return

    if len(succeeded) == spec.nodes:
        _workers(cy, current)
        complete(
            cy, s.SUCCEEDED, "AllWorkersSucceeded", f"All {spec.nodes} worker(s) succeeded.", policy
        )
        if cy.outputs is not None:  # rank 0 exits 0 only after its uploads succeeded
            cy.status["outputs"] = cy.outputs
        progress = cy.status.get("progress")
        if isinstance(progress, dict):  # the last poll may predate the final step
            progress.update({"percent": 100.0, "state": "completed"})
            progress.pop("eta", None)
        cy.event("Normal", s.SUCCEEDED, f"Training finished: all {spec.nodes} worker(s) succeeded.")
        return

    if gh.startup_blocked(cy, spec, current, missing):
        return
    if missing and stale:  # a replacement gang: wait until the old one is gone
        gh.wait_for_old_gang(cy, len(stale))
        missing = []
    elif missing:  # the gang is still forming: (re)create absent workers
        _create_workers(cy, spec, attempt, missing, settings)
    if missing == [] and len(running) + len(succeeded) == spec.nodes and running:
        if cy.phase != s.RUNNING:
            cy.event("Normal", s.RUNNING, f"All {spec.nodes} worker(s) of attempt {attempt} run.")
        cy.status["phase"] = s.RUNNING
        message = f"All {spec.nodes} worker(s) of attempt {attempt} are running."
        cy.cond(s.RUNNING, True, "AllWorkersRunning", message)
        cy.cond(PODS_READY, True, "AllWorkersRunning", message)
        cy.uncond(s.RESTARTING, "AllWorkersRunning", message)
    elif cy.phase not in (s.CREATED, s.RESTARTING, s.RUNNING):
        cy.status["phase"] = s.CREATED
    _workers(cy, current, created=len(missing))


def _workers(cy: Cycle, pods: list[dict[str, Any]], created: int = 0) -> None:
    phases = [s.pod_phase(p) for p in pods]
    cy.status["workers"] = {
        "active": sum(1 for p in phases if p not in TERMINAL) + created,
        "succeeded": phases.count(s.SUCCEEDED),
        "failed": phases.count(s.FAILED),
    }


def _progress(cy: Cycle) -> None:
    if cy.observed.progress is None:
        return
    progress = s.progress_status(cy.observed.progress)
    if progress is not None:
        cy.status["progress"] = progress
