"""The pieces worker and serving pods are built from: common child metadata, the locked-down
security contexts, S3 fetch init containers, credential references, the trainer's
environment, resources and volumes (pure, plain dicts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetune_operator import constants as c
from finetune_operator import names
from finetune_operator.jobref import JobRef
from finetune_operator.spec.job import FineTuneJobSpec
from finetune_operator.spec.storage import S3Source
from finetune_runtime import contract


@dataclass(frozen=True)
class PodSettings:
    """Operator-wide defaults that shape worker pods."""

    default_image: str
    progress_port: int
    # The workers' default fsGroup, so a non-root trainer can write the checkpoint volume;
    # None leaves it to the platform (OpenShift's restricted SCC assigns one per namespace).
    fs_group: int | None = c.DEFAULT_FS_GROUP


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


def child_metadata(job: JobRef, name: str, component: str) -> dict[str, Any]:
    """Name, namespace, labels and the controller owner reference of one child."""
    return {
        "name": name,
        "namespace": job.namespace,
        "labels": labels(job, component),
        "ownerReferences": [owner_reference(job)],
    }


def container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def pod_security(settings: PodSettings) -> dict[str, Any]:
    """Locked down without naming a UID: the image's numeric USER runs (runAsNonRoot)."""
    out: dict[str, Any] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    if settings.fs_group is not None:
        out["fsGroup"] = settings.fs_group
    return out


def config_volume(job: JobRef) -> dict[str, Any]:
    """The job's ConfigMap (the effective training config) as a volume."""
    return {
        "name": "config",
        "configMap": {
            "name": names.config_map_name(job),
            "items": [{"key": c.CONFIG_KEY, "path": c.CONFIG_KEY}],
        },
    }


# ---------------------------------------------------------------------------------- fetching


def credentials_env(source: S3Source) -> list[dict[str, Any]]:
    """S3 credentials reach the fetcher only as Secret references, never as values."""
    if source.secret_ref is None:
        return []
    ref = source.secret_ref
    return [
        {
            "name": contract.ENV_AWS_ACCESS_KEY_ID,
            "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.access_key_id_key}},
        },
        {
            "name": contract.ENV_AWS_SECRET_ACCESS_KEY,
            "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.secret_access_key_key}},
        },
    ]


def build_fetch_container(name: str, image: str, source: S3Source, dest: str) -> dict[str, Any]:
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
        "securityContext": container_security(),
    }
    env = credentials_env(source)
    if env:
        container["env"] = env
    return container


# ----------------------------------------------------------------------------------- trainer


def worker_resources(spec: FineTuneJobSpec) -> dict[str, Any]:
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
        {"name": contract.ENV_NNODES, "value": str(spec.nodes)},
        {"name": contract.ENV_NODE_RANK, "value": str(rank)},
        {"name": contract.ENV_NPROC_PER_NODE, "value": str(spec.procs_per_node)},
        {"name": contract.ENV_MASTER_ADDR, "value": names.master_addr(job)},
        {"name": contract.ENV_MASTER_PORT, "value": str(c.RENDEZVOUS_PORT)},
        {"name": contract.ENV_PROGRESS_PORT, "value": str(progress_port)},
        {"name": contract.ENV_ATTEMPT, "value": str(attempt)},
        {"name": contract.ENV_CACHE, "value": c.CACHE_DIR},
        {"name": contract.ENV_JOB_NAME, "value": job.name},
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
        {"name": contract.ENV_OUTPUT_URI, "value": out.uri},
        {"name": contract.ENV_OUTPUT_MERGE, "value": "true" if out.merge else "false"},
    ]
    if out.endpoint:
        env.append({"name": contract.ENV_OUTPUT_ENDPOINT_URL, "value": out.endpoint})
    if out.region:
        env.append({"name": contract.ENV_OUTPUT_REGION, "value": out.region})
    return env + credentials_env(out)


def trainer_container(
    job: JobRef, spec: FineTuneJobSpec, attempt: int, rank: int, settings: PodSettings
) -> dict[str, Any]:
    """`finetune launch` with the rendezvous env; rank 0 exposes rendezvous and progress."""
    trainer: dict[str, Any] = {
        "name": c.TRAINER_CONTAINER,
        "image": spec.image or settings.default_image,
        "command": ["finetune", "launch", "--config", c.CONFIG_PATH],
        "env": worker_env(job, spec, attempt, rank, settings.progress_port),
        "volumeMounts": [
            {"name": "config", "mountPath": c.CONFIG_DIR, "readOnly": True},
            {"name": "checkpoints", "mountPath": c.CHECKPOINT_DIR},
            {"name": "data", "mountPath": c.DATA_DIR},
            {"name": "dshm", "mountPath": contract.SHM_DIR},
        ],
        "securityContext": container_security(),
    }
    if rank == 0:
        trainer["ports"] = [
            {"name": "rendezvous", "containerPort": c.RENDEZVOUS_PORT, "protocol": "TCP"},
            {"name": "progress", "containerPort": settings.progress_port, "protocol": "TCP"},
        ]
    resources = worker_resources(spec)
    if resources:
        trainer["resources"] = resources
    if spec.image_pull_policy:
        trainer["imagePullPolicy"] = spec.image_pull_policy
    return trainer


def fetch_containers(spec: FineTuneJobSpec, image: str) -> list[dict[str, Any]]:
    """Init containers fetching spec.dataset and spec.model into the data volume."""
    init = []
    if spec.dataset is not None:
        init.append(build_fetch_container("fetch-dataset", image, spec.dataset, c.DATASET_DIR))
    if spec.model is not None:
        init.append(build_fetch_container("fetch-model", image, spec.model, c.MODEL_DIR))
    for container in init:
        if spec.image_pull_policy:
            container["imagePullPolicy"] = spec.image_pull_policy
    return init
