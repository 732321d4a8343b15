"""Child manifests of a FineTuneJob: one `build_*` function per kind, each a plain dict.

Every child is owner-referenced to its job (controller=true), so Kubernetes garbage
collection removes it with the job. Names come from `finetune_operator.names` and are
deterministic, which makes creation idempotent. The pieces pods are made of (metadata,
security, fetch and trainer containers) are in `finetune_operator.pod_parts`.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from finetune_operator import constants as c
from finetune_operator import names
from finetune_operator import scheduling as g
from finetune_operator.jobref import JobRef
from finetune_operator.pod_parts import (
    PodSettings,
    child_metadata,
    config_volume,
    fetch_containers,
    owner_reference,
    pod_security,
    trainer_container,
)
from finetune_operator.pod_template import apply_pod_template
from finetune_operator.spec.base import DEFAULT_STORAGE_SIZE
from finetune_operator.spec.job import FineTuneJobSpec

__all__ = [
    "JobRef",
    "PodSettings",
    "build_config_map",
    "build_event",
    "build_pod_group",
    "build_pvc",
    "build_service",
    "build_worker_pod",
    "owner_reference",
    "spec_hash",
]


def build_config_map(job: JobRef, config_yaml: str) -> dict[str, Any]:
    """The effective training config, mounted read-only at /etc/finetune/config.yaml."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(job, names.config_map_name(job), "config"),
        "data": {c.CONFIG_KEY: config_yaml},
    }


def build_service(job: JobRef, progress_port: int) -> dict[str, Any]:
    """Headless Service giving rank 0 a stable DNS name before it is ready."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(job, names.service_name(job), "rendezvous"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {c.LABEL_JOB: job.name, c.LABEL_COMPONENT: "worker"},
            "ports": [
                {"name": "rendezvous", "port": c.RENDEZVOUS_PORT, "protocol": "TCP"},
                {"name": "progress", "port": progress_port, "protocol": "TCP"},
            ],
        },
    }


def build_pvc(job: JobRef, spec: FineTuneJobSpec) -> dict[str, Any]:
    """The checkpoint volume; every attempt resumes from the newest checkpoint on it."""
    storage = spec.storage
    modes = storage.access_modes or (["ReadWriteOnce"] if spec.nodes == 1 else ["ReadWriteMany"])
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": child_metadata(job, names.pvc_name(job), "checkpoints"),
        "spec": {
            "accessModes": list(modes),
            "resources": {"requests": {"storage": storage.size or DEFAULT_STORAGE_SIZE}},
        },
    }
    if storage.storage_class_name is not None:
        body["spec"]["storageClassName"] = storage.storage_class_name
    return body


def build_pod_group(job: JobRef, spec: FineTuneJobSpec) -> dict[str, Any] | None:
    """The gang scheduler's PodGroup (coscheduling or volcano), None for the default one."""
    return g.pod_group_manifest(
        job.name,
        job.namespace,
        spec.nodes,
        spec.run_policy.scheduling_policy,
        child_metadata(job, g.pod_group_name(job.name), "gang"),
    )


def spec_hash(spec: FineTuneJobSpec, config_yaml: str) -> str:
    """Identifies what a gang runs: the spec without runPolicy and serve, and the effective config.

    Operator settings (e.g. its default image) are left out on purpose, so upgrading the
    operator never restarts running jobs; editing the job does.
    """
    shape = spec.model_dump(mode="json", by_alias=True, exclude={"run_policy", "config", "serve"})
    payload = json.dumps(shape, sort_keys=True) + "\n" + config_yaml
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _worker_metadata(
    job: JobRef,
    spec: FineTuneJobSpec,
    attempt: int,
    rank: int,
    digest: str | None,
    queue: str | None,
) -> dict[str, Any]:
    metadata = child_metadata(job, names.worker_pod_name(job, attempt, rank), "worker")
    metadata["labels"] |= {c.LABEL_ATTEMPT: str(attempt), c.LABEL_RANK: str(rank)}
    gang_labels, gang_annotations = g.gang_pod_metadata(
        job.name, attempt, spec.nodes, spec.run_policy.scheduling_policy, queue
    )
    metadata["labels"] |= gang_labels
    annotations = dict(gang_annotations)
    if digest is not None:
        annotations[c.ANNOTATION_SPEC_HASH] = digest
    if annotations:
        metadata["annotations"] = annotations
    return metadata


def build_worker_pod(
    job: JobRef,
    spec: FineTuneJobSpec,
    attempt: int,
    rank: int,
    settings: PodSettings,
    digest: str | None = None,
    queue: str | None = None,
) -> dict[str, Any]:
    """One worker of gang `attempt`: init containers fetch data, then `finetune launch`.

    `queue` is the job's Kueue LocalQueue (its kueue.x-k8s.io/queue-name label).
    """
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": spec.run_policy.termination_grace_period_seconds,
        "hostname": names.hostname(job, rank),
        "subdomain": names.service_name(job),
        "automountServiceAccountToken": False,
        "securityContext": pod_security(settings),
        "containers": [trainer_container(job, spec, attempt, rank, settings)],
        "volumes": [
            config_volume(job),
            {
                "name": "checkpoints",
                "persistentVolumeClaim": {"claimName": names.claim_name(job, spec)},
            },
            {"name": "data", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        ],
    }
    init = fetch_containers(spec, spec.image or settings.default_image)
    if init:
        pod_spec["initContainers"] = init
    optional = {
        "nodeSelector": spec.node_selector or None,
        "tolerations": spec.tolerations or None,
        "affinity": spec.affinity,
        "priorityClassName": spec.priority_class,
        "schedulerName": g.scheduler_name(spec.run_policy.scheduling_policy, spec.scheduler_name),
        "serviceAccountName": spec.service_account_name,
        "imagePullSecrets": [s.model_dump() for s in spec.image_pull_secrets] or None,
    }
    pod_spec |= {key: value for key, value in optional.items() if value is not None}
    metadata = _worker_metadata(job, spec, attempt, rank, digest, queue)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}
    return apply_pod_template(pod, spec.pod_template)


def build_event(
    job: dict[str, Any], type_: str, reason: str, message: str, now: datetime, suffix: str
) -> dict[str, Any]:
    """A core/v1 Event about the job (named explicitly: `<job>.<suffix>`)."""
    meta = job.get("metadata") or {}
    name, namespace = meta.get("name", ""), meta.get("namespace", "")
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{name}.{suffix}", "namespace": namespace},
        "involvedObject": {
            "apiVersion": c.API_VERSION,
            "kind": c.KIND,
            "name": name,
            "namespace": namespace,
            "uid": meta.get("uid", ""),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": c.MANAGER},
        "reportingComponent": c.MANAGER,
        "reportingInstance": c.MANAGER,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
