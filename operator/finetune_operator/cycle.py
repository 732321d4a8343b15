"""One reconcile pass's scratch state and outcome: what was observed, what to do.

`reconcile.reconcile` builds a `Cycle` from the job's identity and status, the observed
children and the time; the helpers that decide (reconcile, situations, gang, gang_health)
write into it; `Cycle.finish` validates the status against the status model and returns
the `Decision` the kopf shell acts on. Also the terminal transitions every path shares.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from finetune_operator import pod_facts as pf
from finetune_operator import startup as st
from finetune_operator import status as s
from finetune_operator.jobref import JobRef
from finetune_operator.redact import redact
from finetune_operator.spec.run_policy import RunPolicy
from finetune_operator.status_model import check_status

INVALID_SPEC = "InvalidSpec"
PERMANENT_FAILURE = "PermanentFailure"
PODS_READY = s.PODS_READY
TERMINAL = (s.SUCCEEDED, s.FAILED)


@dataclass(frozen=True)
class Observed:
    """What exists now: children owned by the job, and rank 0's progress if polled."""

    pods: list[dict[str, Any]] = field(default_factory=list)
    config_map: dict[str, Any] | None = None
    service: dict[str, Any] | None = None
    claim: dict[str, Any] | None = None  # the checkpoint PVC (ours or spec.storage.existingClaim)
    progress: dict[str, Any] | None = None
    pod_group: dict[str, Any] | None = None  # the coscheduling/volcano PodGroup, if any
    rejections: list[st.Rejection] = field(default_factory=list)  # creates refused last cycle
    logs: dict[str, str] = field(default_factory=dict)  # pod name -> last log lines (failed pods)
    serving: dict[str, Any] | None = None  # spec.serve's Deployment, once created
    serving_service: dict[str, Any] | None = None


@dataclass(frozen=True)
class ChildRef:
    kind: str
    name: str


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Decision:
    status: dict[str, Any]
    create: list[dict[str, Any]] = field(default_factory=list)
    update: list[dict[str, Any]] = field(default_factory=list)
    delete: list[ChildRef] = field(default_factory=list)
    # Pods still terminating after their grace period: deleted with gracePeriodSeconds=0.
    force_delete: list[ChildRef] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    delete_job: bool = False


class Cycle:
    """Mutable scratch state for one reconcile pass."""

    def __init__(
        self, ref: JobRef, old_status: dict[str, Any] | None, observed: Observed, now: datetime
    ) -> None:
        self.ref = ref
        self.observed = observed
        self.now = now
        self.old = copy.deepcopy(old_status or {})
        self.status: dict[str, Any] = copy.deepcopy(self.old)
        self.decision = Decision(status=self.status)
        self.conditions: list[dict[str, Any]] = list(self.status.get("conditions") or [])
        self.digest: str | None = None  # spec hash of the gang the spec asks for
        self.outputs: dict[str, str] | None = None  # status.outputs once it succeeds

    # -- small helpers
    @property
    def phase(self) -> str | None:
        return self.status.get("phase")

    def cond(self, type_: str, on: bool, reason: str, message: str) -> None:
        message = redact(message)  # conditions never echo a credential
        self.conditions = s.set_condition(self.conditions, type_, on, reason, message, self.now)

    def uncond(self, type_: str, reason: str, message: str) -> None:
        self.conditions = s.clear_condition(self.conditions, type_, reason, message, self.now)

    def event(self, type_: str, reason: str, message: str) -> None:
        self.decision.events.append(Event(type_, reason, redact(message)))

    def delete_pod(self, pod: dict[str, Any]) -> None:
        ref = ChildRef("Pod", pf.name_of(pod))
        if not pf.is_terminating(pod) and ref not in self.decision.delete:
            self.decision.delete.append(ref)

    def retire_pod(self, pod: dict[str, Any]) -> None:
        """Delete a pod of a replaced gang; force it once its grace period is long over."""
        if pf.termination_overdue(pod, self.now):
            ref = ChildRef("Pod", pf.name_of(pod))
            if ref not in self.decision.force_delete:
                self.decision.force_delete.append(ref)
        else:
            self.delete_pod(pod)

    def finish(self) -> Decision:
        phase = self.phase
        if phase in s.PHASES:
            self.conditions = s.kstatus_conditions(self.conditions, phase, self.now)
        self.status["conditions"] = self.conditions
        check_status(self.status)  # what the CRD declares, or the apiserver would prune it
        return self.decision


def elapsed(since: datetime, now: datetime) -> float:
    """Seconds from `since` to `now`. Compared with the policy's seconds rather than adding
    them to a datetime: a huge (valid int64) deadline would overflow datetime's range."""
    return (now - since).total_seconds()


def clean_pods(cy: Cycle, policy: RunPolicy) -> None:
    for pod in cy.observed.pods:
        if policy.clean_pod_policy == "All" or (
            policy.clean_pod_policy == "Running" and pf.phase_of(pod) not in TERMINAL
        ):
            cy.delete_pod(pod)


def complete(cy: Cycle, phase: str, reason: str, message: str, policy: RunPolicy) -> None:
    cy.status["phase"] = phase
    cy.status["completionTime"] = s.rfc3339(cy.now)
    cy.cond(phase, True, reason, message)
    cy.uncond(s.RUNNING, reason, "The job has finished.")
    cy.uncond(s.RESTARTING, reason, "The job has finished.")
    clean_pods(cy, policy)


def fail(cy: Cycle, reason: str, message: str, policy: RunPolicy) -> None:
    already = cy.phase == s.FAILED and (
        (s.get_condition(cy.conditions, s.FAILED) or {}).get("message") == message
    )
    complete(cy, s.FAILED, reason, message, policy)
    if already:
        cy.status["completionTime"] = cy.old.get("completionTime", cy.status["completionTime"])
    else:
        cy.event("Warning", reason, message)
