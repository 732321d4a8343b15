"""Child manifests of a FineTuneJob: one builder per kind, each returning a plain dict.

Every child is owner-referenced to its job (controller=true), so Kubernetes garbage
collection removes it with the job. Names are deterministic, which makes creation
idempotent: an existing child answers 409 AlreadyExists and the operator moves on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from finetune_operator import constants as c
from finetune_operator import scheduling as g
from finetune_operator.pod_template import apply_pod_template
from finetune_operator.spec import DEFAULT_STORAGE_SIZE, FineTuneJobSpec, S3Source


@dataclass(frozen=True)
class JobRef:
    """The identity of a FineTuneJob: what children need to point back at it."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> JobRef:
        meta = body.get("metadata") or {}
        return cls(meta.get("name", ""), meta.get("namespace", ""), meta.get("uid", ""))


@dataclass(frozen=True)
class PodSettings:
    """Operator-wide defaults that shape worker pods."""

    default_image: str
    progress_port: int
    # The workers' default fsGroup, so a non-root trainer can write the checkpoint volume;
    # None leaves it to the platform (OpenShift's restricted SCC assigns one per namespace).
    fs_group: int | None = c.DEFAULT_FS_GROUP


# ------------------------------------------------------------------------------------ names


def service_name(job: JobRef) -> str:
    return job.name


def config_map_name(job: JobRef) -> str:
    return f"{job.name}-config"


def pvc_name(job: JobRef) -> str:
    return f"{job.name}-checkpoints"


def claim_name(job: JobRef, spec: FineTuneJobSpec) -> str:
    return spec.storage.existing_claim or pvc_name(job)


def pod_name(job: JobRef, attempt: int, rank: int) -> str:
    """Unique per attempt, so a replacement gang never collides with a terminating one."""
    return f"{job.name}-a{attempt}-worker-{rank}"


def hostname(job: JobRef, rank: int) -> str:
    return f"{job.name}-worker-{rank}"


def master_addr(job: JobRef) -> str:
    return f"{hostname(job, 0)}.{service_name(job)}.{job.namespace}.svc"


# ----------------------------------------------------------------------------------- common


def labels(job: JobRef, component: str) -> dict[str, str]:
    return {
        c.LABEL_NAME: c.APP_NAME,
        c.LABEL_MANAGED_BY: c.MANAGER,
        c.LABEL_COMPONENT: component,
        c.LABEL_JOB: job.name,
    }


def owner_reference(job: JobRef) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(job: JobRef, name: str, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": job.namespace,
        "labels": labels(job, component),
        "ownerReferences": [owner_reference(job)],
    }


# ----------------------------------------------------------------------------------- builders


def config_map(job: JobRef, config_yaml: str) -> dict[str, Any]:
    """The effective training config, mounted read-only at /etc/finetune/config.yaml."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, config_map_name(job), "config"),
        "data": {c.CONFIG_KEY: config_yaml},
    }


def service(job: JobRef, progress_port: int) -> dict[str, Any]:
    """Headless Service giving rank 0 a stable DNS name before it is ready."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, service_name(job), "rendezvous"),
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


def pvc(job: JobRef, spec: FineTuneJobSpec) -> dict[str, Any]:
    """The checkpoint volume; every attempt resumes from the newest checkpoint on it."""
    storage = spec.storage
    modes = storage.access_modes or (["ReadWriteOnce"] if spec.nodes == 1 else ["ReadWriteMany"])
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(job, pvc_name(job), "checkpoints"),
        "spec": {
            "accessModes": list(modes),
            "resources": {"requests": {"storage": storage.size or DEFAULT_STORAGE_SIZE}},
        },
    }
    if storage.storage_class_name is not None:
        body["spec"]["storageClassName"] = storage.storage_class_name
    return body


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _credentials_env(source: S3Source) -> list[dict[str, Any]]:
    """S3 credentials reach the fetcher only as Secret references, never as values."""
    if source.secret_ref is None:
        return []
    ref = source.secret_ref
    return [
        {
            "name": "AWS_ACCESS_KEY_ID",
            "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.access_key_id_key}},
        },
        {
            "name": "AWS_SECRET_ACCESS_KEY",
            "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.secret_access_key_key}},
        },
    ]


def fetch_container(name: str, image: str, source: S3Source, dest: str) -> dict[str, Any]:
    """An init container: `finetune fetch <uri> <dest>/` into the shared data volume.

    The trailing slash makes a single object land inside `dest` under its own name
    (a prefix is mirrored under `dest` either way), matching effective.rewrite.
    """
    command = ["finetune", "fetch", source.uri, dest.rstrip("/") + "/"]
    if source.endpoint:
        command += ["--endpoint-url", source.endpoint]
    if source.region:
        command += ["--region", source.region]
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "command": command,
        "volumeMounts": [{"name": "data", "mountPath": c.DATA_DIR}],
        "securityContext": _container_security(),
    }
    env = _credentials_env(source)
    if env:
        container["env"] = env
    return container


def _resources(spec: FineTuneJobSpec) -> dict[str, Any]:
    requests = dict(spec.resources.requests)
    limits = dict(spec.resources.limits)
    gpus = spec.gpus_per_node
    if gpus:
        requests[c.GPU_RESOURCE] = str(gpus)
        limits[c.GPU_RESOURCE] = str(gpus)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def worker_env(
    job: JobRef, spec: FineTuneJobSpec, attempt: int, rank: int, progress_port: int
) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "PET_NNODES", "value": str(spec.nodes)},
        {"name": "PET_NODE_RANK", "value": str(rank)},
        {"name": "PET_NPROC_PER_NODE", "value": str(spec.procs_per_node)},
        {"name": "PET_MASTER_ADDR", "value": master_addr(job)},
        {"name": "PET_MASTER_PORT", "value": str(c.RENDEZVOUS_PORT)},
        {"name": "FINETUNE_PROGRESS_PORT", "value": str(progress_port)},
        {"name": "FINETUNE_ATTEMPT", "value": str(attempt)},
        {"name": "FINETUNE_CACHE", "value": c.CACHE_DIR},
        {"name": "FINETUNE_JOB_NAME", "value": job.name},
    ]
    env += output_env(spec)
    env += [item.model_dump(exclude_none=True) for item in spec.env]
    return env


def output_env(spec: FineTuneJobSpec) -> list[dict[str, Any]]:
    """Where rank 0 publishes the weights (`finetune train` reads FINETUNE_OUTPUT_*)."""
    out = spec.output
    if out is None:
        return []
    env = [
        {"name": "FINETUNE_OUTPUT_URI", "value": out.uri},
        {"name": "FINETUNE_OUTPUT_MERGE", "value": "true" if out.merge else "false"},
    ]
    if out.endpoint:
        env.append({"name": "FINETUNE_OUTPUT_ENDPOINT_URL", "value": out.endpoint})
    if out.region:
        env.append({"name": "FINETUNE_OUTPUT_REGION", "value": out.region})
    return env + _credentials_env(out)


def spec_hash(spec: FineTuneJobSpec, config_yaml: str) -> str:
    """Identifies what a gang runs: the spec without runPolicy and serve, and the effective config.

    Operator settings (e.g. its default image) are left out on purpose, so upgrading the
    operator never restarts running jobs; editing the job does.
    """
    shape = spec.model_dump(mode="json", by_alias=True, exclude={"run_policy", "config", "serve"})
    payload = json.dumps(shape, sort_keys=True) + "\n" + config_yaml
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def pod_group(job: JobRef, spec: FineTuneJobSpec) -> dict[str, Any] | None:
    """The gang scheduler's PodGroup (coscheduling or volcano), None for the default one."""
    return g.pod_group_manifest(
        job.name,
        job.namespace,
        spec.nodes,
        spec.run_policy.scheduling_policy,
        _metadata(job, g.pod_group_name(job.name), "gang"),
    )


def _pod_security(settings: PodSettings) -> dict[str, Any]:
    """Locked down without naming a UID: the image's numeric USER runs (runAsNonRoot)."""
    out: dict[str, Any] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    if settings.fs_group is not None:
        out["fsGroup"] = settings.fs_group
    return out


def worker_pod(
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
    image = spec.image or settings.default_image
    metadata = _metadata(job, pod_name(job, attempt, rank), "worker")
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

    trainer: dict[str, Any] = {
        "name": c.TRAINER_CONTAINER,
        "image": image,
        "command": ["finetune", "launch", "--config", c.CONFIG_PATH],
        "env": worker_env(job, spec, attempt, rank, settings.progress_port),
        "volumeMounts": [
            {"name": "config", "mountPath": c.CONFIG_DIR, "readOnly": True},
            {"name": "checkpoints", "mountPath": c.CHECKPOINT_DIR},
            {"name": "data", "mountPath": c.DATA_DIR},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        "securityContext": _container_security(),
    }
    if rank == 0:
        trainer["ports"] = [
            {"name": "rendezvous", "containerPort": c.RENDEZVOUS_PORT, "protocol": "TCP"},
            {"name": "progress", "containerPort": settings.progress_port, "protocol": "TCP"},
        ]
    resources = _resources(spec)
    if resources:
        trainer["resources"] = resources
    if spec.image_pull_policy:
        trainer["imagePullPolicy"] = spec.image_pull_policy

    init = []
    if spec.dataset is not None:
        init.append(fetch_container("fetch-dataset", image, spec.dataset, c.DATASET_DIR))
    if spec.model is not None:
        init.append(fetch_container("fetch-model", image, spec.model, c.MODEL_DIR))
    for container in init:
        if spec.image_pull_policy:
            container["imagePullPolicy"] = spec.image_pull_policy

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": spec.run_policy.termination_grace_period_seconds,
        "hostname": hostname(job, rank),
        "subdomain": service_name(job),
        "automountServiceAccountToken": False,
        "securityContext": _pod_security(settings),
        "containers": [trainer],
        "volumes": [
            {
                "name": "config",
                "configMap": {
                    "name": config_map_name(job),
                    "items": [{"key": c.CONFIG_KEY, "path": c.CONFIG_KEY}],
                },
            },
            {"name": "checkpoints", "persistentVolumeClaim": {"claimName": claim_name(job, spec)}},
            {"name": "data", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        ],
    }
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
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}
    return apply_pod_template(pod, spec.pod_template)


def event(
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
