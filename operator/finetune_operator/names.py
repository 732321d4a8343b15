"""The deterministic names of a job's children and of its workers' network identities.

Names never depend on anything but the job, the attempt and the rank, which makes
creation idempotent: an existing child answers 409 AlreadyExists and the operator moves on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from finetune_operator.jobref import JobRef

if TYPE_CHECKING:
    from finetune_operator.spec.job import FineTuneJobSpec


def service_name(job: JobRef) -> str:
    return job.name


def config_map_name(job: JobRef) -> str:
    return f"{job.name}-config"


def pvc_name(job: JobRef) -> str:
    """The checkpoint PVC the operator creates (unless spec.storage.existingClaim)."""
    return f"{job.name}-checkpoints"


def worker_pod_name(job: JobRef, attempt: int, rank: int) -> str:
    """Unique per attempt, so a replacement gang never collides with a terminating one."""
    return f"{job.name}-a{attempt}-worker-{rank}"


def hostname(job: JobRef, rank: int) -> str:
    return f"{job.name}-worker-{rank}"


def master_addr(job: JobRef) -> str:
    return f"{hostname(job, 0)}.{service_name(job)}.{job.namespace}.svc"


def serving_name(job: JobRef) -> str:
    """spec.serve's Deployment and Service."""
    return f"{job.name}-serve"


def claim_name(job: JobRef, spec: FineTuneJobSpec | None) -> str:
    """The checkpoint volume the workers mount: spec.storage.existingClaim or our PVC."""
    existing = spec.storage.existing_claim if spec is not None else None
    return existing or pvc_name(job)
