"""The reconciler: (job, observed children, now) -> actions + new status. No I/O here.

Everything the kopf shell does follows from `reconcile`'s `Decision`: patch the status
(first, so an interrupted cycle is recomputed from a recorded attempt), delete children,
create/update children, post events, delete the job. Running it again on the same
observations yields the same decision, so an operator restart never duplicates pods.

The job is read once (`parse_job`); a finished job is cleaned up (`_finished`); an
invalid one fails with InvalidSpec; an active one runs through the situations of
`finetune_operator.situations`; a succeeded one with `spec.serve` gets its replicas.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from finetune_operator import names, serving
from finetune_operator import status as s
from finetune_operator.cycle import (
    INVALID_SPEC,
    PERMANENT_FAILURE,
    TERMINAL,
    ChildRef,
    Cycle,
    Decision,
    Event,
    Observed,
    clean_pods,
    elapsed,
    fail,
)
from finetune_operator.parsed import ParsedJob, parse_job
from finetune_operator.pod_parts import PodSettings
from finetune_operator.situations import run_active
from finetune_operator.spec.errors import SpecError
from finetune_operator.spec.run_policy import RunPolicy

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
    job: dict[str, Any],
    observed: Observed,
    now: datetime,
    settings: PodSettings,
    parsed: ParsedJob | None = None,
) -> Decision:
    """Decide what to do about one FineTuneJob. Pure: same inputs, same decision.

    `parsed` is `parse_job(job)` when the caller already has it (the controller parses
    once per cycle and observes with it too)."""
    parsed = parsed if parsed is not None else parse_job(job)
    cy = Cycle(parsed.ref, job.get("status"), observed, now)
    if parsed.deleting:
        return Decision(status=cy.old)  # garbage collection removes the children
    retry_invalid = _spec_fixed(cy, parsed.generation)
    if parsed.generation is not None:  # every cycle, finished jobs too (GitOps tools wait)
        cy.status["observedGeneration"] = parsed.generation
    if cy.phase in TERMINAL and not retry_invalid:
        _serving(cy, parsed, settings)
        _finished(cy, parsed.run_policy)
        return cy.finish()
    checked = parsed.checked
    if isinstance(checked, SpecError):
        fail(cy, INVALID_SPEC, str(checked), parsed.run_policy)
        return cy.finish()
    cy.outputs = s.outputs_status(checked.spec.output, checked.config.adapter)
    if retry_invalid:  # the user fixed the spec: start over with a fresh gang
        cy.status.pop("completionTime", None)
        cy.uncond(s.FAILED, "SpecFixed", "The spec is valid again.")
        cy.status["phase"] = s.PENDING
    run_active(cy, checked, settings, parsed.queue, fresh=retry_invalid)
    _serving(cy, parsed, settings)
    return cy.finish()


def _spec_fixed(cy: Cycle, generation: int | None) -> bool:
    """The job failed with InvalidSpec and was edited since: validate it again."""
    was_invalid = (
        cy.phase == s.FAILED
        and (s.get_condition(cy.conditions, s.FAILED) or {}).get("reason") == INVALID_SPEC
    )
    return was_invalid and cy.old.get("observedGeneration") != generation


def _serving(cy: Cycle, parsed: ParsedJob, settings: PodSettings) -> None:
    """spec.serve: inference replicas of a Succeeded job (see finetune_operator.serving);
    removed again when spec.serve is."""
    if cy.phase != s.SUCCEEDED:
        return
    if not parsed.serve_requested:
        name = names.serving_name(cy.ref)
        if cy.observed.serving is not None:
            cy.decision.delete.append(ChildRef("Deployment", name))
        if cy.observed.serving_service is not None:
            cy.decision.delete.append(ChildRef("Service", name))
        cy.status.pop("serving", None)
        return
    valid = parsed.valid
    if isinstance(valid, SpecError):
        return
    decided = serving.decide(
        cy.ref, valid.spec, cy.status, cy.observed.serving, cy.observed.serving_service, settings
    )
    cy.decision.create += decided.create
    cy.decision.update += decided.update
    if decided.status is not None:
        cy.status["serving"] = decided.status


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
