"""The gang of the current attempt, and the moves every situation shares (pure, on a Cycle).

`observe_gang` sorts the observed pods into the current attempt and leftovers of
replaced gangs; `ensure_children` keeps ConfigMap, Service, PodGroup and PVC in place;
`replace_gang` stops the current gang and starts the next attempt; `create_workers`
(re)creates absent ranks; `set_workers` writes `status.workers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetune_operator import gang_health as gh
from finetune_operator import manifests as m
from finetune_operator import pod_facts as pf
from finetune_operator import status as s
from finetune_operator.cycle import TERMINAL, Cycle
from finetune_operator.parsed import CheckedJob
from finetune_operator.pod_parts import PodSettings
from finetune_operator.spec.job import FineTuneJobSpec

Pod = dict[str, Any]


@dataclass
class Gang:
    """The current attempt as observed this cycle: what every situation reads."""

    spec: FineTuneJobSpec
    settings: PodSettings
    queue: str | None  # the job's Kueue LocalQueue
    attempt: int
    current: list[Pod]  # pods of this attempt that are not terminating
    stale: list[Pod]  # pods of replaced gangs (being retired)
    fresh: bool = False  # the spec was fixed after InvalidSpec: start over

    def in_phase(self, phase: str) -> list[Pod]:
        return [p for p in self.current if pf.phase_of(p) == phase]

    @property
    def missing(self) -> list[int]:
        """Ranks of this attempt with no (live) pod."""
        ranks = {pf.rank_of(p) for p in self.current}
        return [rank for rank in range(self.spec.nodes) if rank not in ranks]


def observe_gang(
    cy: Cycle, spec: FineTuneJobSpec, settings: PodSettings, queue: str | None, fresh: bool
) -> Gang:
    """The current attempt (the highest recorded or seen); retire pods of older ones."""
    pods = cy.observed.pods
    attempt = max([int(cy.status.get("attempt") or 0)] + [pf.attempt_of(p) for p in pods])
    cy.status["attempt"] = attempt
    stale = [p for p in pods if pf.attempt_of(p) != attempt]
    for pod in stale:
        cy.retire_pod(pod)
    current = [p for p in pods if pf.attempt_of(p) == attempt and not pf.is_terminating(p)]
    return Gang(spec, settings, queue, attempt, current, stale, fresh)


def ensure_children(cy: Cycle, job: CheckedJob, progress_port: int) -> bool:
    """Create/refresh ConfigMap, Service, PodGroup and PVC; False if the workers cannot
    start yet (spec.storage.existingClaim does not exist)."""
    obs, ref, spec = cy.observed, cy.ref, job.spec
    wanted = m.build_config_map(ref, job.config_yaml)
    if obs.config_map is None:
        cy.decision.create.append(wanted)
    elif (obs.config_map.get("data") or {}) != wanted["data"]:
        cy.decision.update.append(wanted)
    if obs.service is None:
        cy.decision.create.append(m.build_service(ref, progress_port))
    group = m.build_pod_group(ref, spec)
    if group is not None and obs.pod_group is None:
        cy.decision.create.append(group)
    if spec.storage.existing_claim is None:
        if obs.claim is None:
            cy.decision.create.append(m.build_pvc(ref, spec))
        return True
    if obs.claim is None:
        _claim_not_found(cy, spec.storage.existing_claim)
        return False
    return True


def _claim_not_found(cy: Cycle, claim: str) -> None:
    message = (
        f"PersistentVolumeClaim {claim!r} (spec.storage.existingClaim) does not exist in "
        f"namespace {cy.ref.namespace}: create it or drop existingClaim."
    )
    if (
        cy.phase != s.PENDING
        or (s.get_condition(cy.conditions, s.CREATED) or {}).get("message") != message
    ):
        cy.event("Warning", "ClaimNotFound", message)
    cy.status["phase"] = s.PENDING
    cy.cond(s.CREATED, False, "ClaimNotFound", message)


def create_workers(cy: Cycle, gang: Gang, ranks: list[int]) -> None:
    """Create the workers of `ranks` for the current attempt (those not there already)."""
    existing = {pf.name_of(p) for p in cy.observed.pods}
    for rank in ranks:
        pod = m.build_worker_pod(
            cy.ref, gang.spec, gang.attempt, rank, gang.settings, cy.digest, gang.queue
        )
        if pod["metadata"]["name"] not in existing:
            cy.decision.create.append(pod)


def replace_gang(cy: Cycle, gang: Gang, stop_current: bool = True) -> int:
    """Stop the current gang (unless told not to) and start attempt + 1: now if no pod of
    an older gang is left, else once they are gone (the same hostnames, the same checkpoint
    directory). Returns the pods created; `status.workers` counts them."""
    if stop_current:
        for pod in gang.current:
            cy.delete_pod(pod)
    gang.attempt += 1
    cy.status["attempt"] = gang.attempt
    cy.status.pop("startup", None)  # a new gang starts with a clean slate
    created = 0
    if cy.observed.pods:
        gh.wait_for_old_gang(cy, len(cy.observed.pods))
    else:
        create_workers(cy, gang, list(range(gang.spec.nodes)))
        created = gang.spec.nodes
    set_workers(cy, [], created=created)
    return created


def set_workers(cy: Cycle, pods: list[Pod], created: int = 0) -> None:
    """`status.workers`: active (incl. just created), succeeded and failed pods."""
    phases = [pf.phase_of(p) for p in pods]
    cy.status["workers"] = {
        "active": sum(1 for p in phases if p not in TERMINAL) + created,
        "succeeded": phases.count(s.SUCCEEDED),
        "failed": phases.count(s.FAILED),
    }
