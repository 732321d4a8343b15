"""Gang admission: Kueue pod groups and the gang schedulers' PodGroups (pure builders).

- Kueue (plain-pod integration): a `kueue.x-k8s.io/queue-name` label on the FineTuneJob
  makes each gang attempt one Kueue pod group, not retriable in place (the operator
  replaces whole gangs); Kueue gates the pods (`kueue.x-k8s.io/admission`) until the whole
  group fits its ClusterQueue's quota.
- `spec.runPolicy.schedulingPolicy.scheduler: coscheduling | volcano`: the operator
  creates a PodGroup (scheduler-plugins' scheduling.x-k8s.io/v1alpha1 or Volcano's
  scheduling.volcano.sh/v1beta1) owned by the job and points every worker at it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
KUEUE_TOTAL_ANNOTATION = "kueue.x-k8s.io/pod-group-total-count"
KUEUE_GATE = "kueue.x-k8s.io/admission"
# Each gang attempt is its own pod group and is never refilled: without this, Kueue keeps a
# group with a failed or deleted worker admitted "waiting for replacement pods", and its
# `kueue.x-k8s.io/managed` finalizer on the old pods blocks gang replacement and deletion.
KUEUE_RETRIABLE_ANNOTATION = "kueue.x-k8s.io/retriable-in-group"
KUEUE_WORKLOAD_API, KUEUE_WORKLOADS = "kueue.x-k8s.io/v1beta2", "workloads"

COSCHEDULING_API = "scheduling.x-k8s.io/v1alpha1"
COSCHEDULING_LABEL = "scheduling.x-k8s.io/pod-group"
COSCHEDULING_SCHEDULER = "scheduler-plugins-scheduler"
VOLCANO_API = "scheduling.volcano.sh/v1beta1"
VOLCANO_ANNOTATION = "scheduling.k8s.io/group-name"
VOLCANO_SCHEDULER = "volcano"

Scheduler = Literal["default", "coscheduling", "volcano"]
DEFAULT_SCHEDULER_NAMES = {"coscheduling": COSCHEDULING_SCHEDULER, "volcano": VOLCANO_SCHEDULER}

# Keys the operator sets on worker pods for gang admission: podTemplate may not set them.
RESERVED_LABELS = (KUEUE_QUEUE_LABEL, KUEUE_GROUP_LABEL, COSCHEDULING_LABEL)
RESERVED_ANNOTATIONS = (KUEUE_TOTAL_ANNOTATION, KUEUE_RETRIABLE_ANNOTATION, VOLCANO_ANNOTATION)


class SchedulingPolicy(BaseModel):
    """Gang admission, as in Kubeflow's RunPolicy.schedulingPolicy."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=False, alias_generator=to_camel, frozen=True
    )

    scheduler: Scheduler = Field(
        "default",
        description="default: the pods' scheduler as they are (Kueue still applies through "
        "the queue-name label); coscheduling: a scheduler-plugins PodGroup "
        f"({COSCHEDULING_API}, schedulerName {COSCHEDULING_SCHEDULER} unless spec.schedulerName "
        f"says otherwise); volcano: a Volcano PodGroup ({VOLCANO_API}, schedulerName volcano).",
    )
    min_available: int | None = Field(
        None, ge=1, le=512, description="Workers that must be placed together (default: nodes)."
    )
    priority_class: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        description="PriorityClass of the workers (and of the PodGroup).",
    )
    queue: str | None = Field(
        None, min_length=1, max_length=253, description="Volcano queue of the PodGroup."
    )


def kueue_queue(job_labels: dict[str, Any] | None) -> str | None:
    """The Kueue LocalQueue the job asks for (its `kueue.x-k8s.io/queue-name` label)."""
    value = (job_labels or {}).get(KUEUE_QUEUE_LABEL)
    return str(value) if value else None


def kueue_group_name(job: str, attempt: int) -> str:
    """One Kueue pod group per gang attempt: a replaced gang is admitted afresh."""
    return f"{job}-a{attempt}"


def pod_group_name(job: str) -> str:
    return job


def min_member(policy: SchedulingPolicy | None, nodes: int) -> int:
    if policy is None or policy.min_available is None:
        return nodes
    return min(policy.min_available, nodes)


def gang_pod_metadata(
    job: str,
    attempt: int,
    nodes: int,
    policy: SchedulingPolicy | None,
    queue: str | None,
) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) that put one worker into its gang's admission group."""
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    if queue is not None:
        labels[KUEUE_QUEUE_LABEL] = queue
        labels[KUEUE_GROUP_LABEL] = kueue_group_name(job, attempt)
        annotations[KUEUE_TOTAL_ANNOTATION] = str(nodes)
        annotations[KUEUE_RETRIABLE_ANNOTATION] = "false"
    scheduler = policy.scheduler if policy is not None else "default"
    if scheduler == "coscheduling":
        labels[COSCHEDULING_LABEL] = pod_group_name(job)
    elif scheduler == "volcano":
        annotations[VOLCANO_ANNOTATION] = pod_group_name(job)
    return labels, annotations


def scheduler_name(policy: SchedulingPolicy | None, explicit: str | None) -> str | None:
    """spec.schedulerName wins; else the gang scheduler's usual name; else the default."""
    if explicit is not None:
        return explicit
    if policy is None:
        return None
    return DEFAULT_SCHEDULER_NAMES.get(policy.scheduler)


def pod_group_manifest(
    job: str,
    namespace: str,
    nodes: int,
    policy: SchedulingPolicy | None,
    metadata: dict[str, Any],
) -> dict[str, Any] | None:
    """The job's PodGroup for coscheduling/volcano (None for the default scheduler).

    `metadata` is the job's common child metadata (labels, ownerReferences); the
    name and namespace are set here.
    """
    if policy is None or policy.scheduler == "default":
        return None
    meta = {**metadata, "name": pod_group_name(job), "namespace": namespace}
    spec: dict[str, Any] = {"minMember": min_member(policy, nodes)}
    if policy.scheduler == "coscheduling":
        return {"apiVersion": COSCHEDULING_API, "kind": "PodGroup", "metadata": meta, "spec": spec}
    if policy.queue is not None:
        spec["queue"] = policy.queue
    if policy.priority_class is not None:
        spec["priorityClassName"] = policy.priority_class
    return {"apiVersion": VOLCANO_API, "kind": "PodGroup", "metadata": meta, "spec": spec}


def kueue_workload_to_release(pod: dict[str, Any]) -> str | None:
    """The Kueue Workload to delete for a worker deleted before its gang was admitted.

    Kueue keeps its `kueue.x-k8s.io/managed` finalizer on the pods of a pod group it has
    not admitted until the group's Workload (named like the group) is deleted: deleting a
    queued job, or replacing or suspending a queued gang, would otherwise leave its pods
    terminating forever (observed with Kueue v0.17.0; Kueue's documented way out).
    """
    meta = pod.get("metadata") or {}
    group = (meta.get("labels") or {}).get(KUEUE_GROUP_LABEL)
    if not group or not meta.get("deletionTimestamp"):
        return None
    gates = (pod.get("spec") or {}).get("schedulingGates") or []
    return str(group) if any(gate.get("name") == KUEUE_GATE for gate in gates) else None


def admission_state(pods: list[dict[str, Any]]) -> str | None:
    """'Queued' while Kueue gates any worker, 'Admitted' once none is gated (None: no pods)."""
    if not pods:
        return None
    for pod in pods:
        gates = (pod.get("spec") or {}).get("schedulingGates") or []
        if any(gate.get("name") == KUEUE_GATE for gate in gates):
            return "Queued"
    return "Admitted"
