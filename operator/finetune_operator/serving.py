"""Inference replicas of a succeeded job (`spec.serve`): builders and the pure decision.

After the job Succeeded, a Deployment of `finetune serve` pods and a Service in front of
them serve the trained outputs over the OpenAI API:

- with `spec.output.merge` the merged model is fetched from S3 by an init container
  (any node can run a replica);
- otherwise the replicas mount the checkpoint volume read-only and serve the effective
  training config's outputs (the adapter on its base model), like `finetune serve
  config.yaml` does locally.

The pod template carries a hash of what is served (the outputs, the completion time of
the run that wrote them, the serve spec), so a retrain that succeeds again changes the
template and Kubernetes rolls the replicas. Both children are owner-referenced to the
job, so they go when the job goes. Readiness is `/readyz` (model loaded), liveness
`/healthz`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from finetune_operator import constants as c
from finetune_operator import names
from finetune_operator.jobref import JobRef
from finetune_operator.pod_parts import (
    PodSettings,
    build_fetch_container,
    child_metadata,
    config_volume,
    container_security,
    labels,
    pod_security,
)
from finetune_operator.spec.job import FineTuneJobSpec
from finetune_operator.spec.serve import ServeSpec
from finetune_operator.spec.storage import S3Source
from finetune_runtime import contract

COMPONENT = "serving"
CONTAINER = "serve"
SERVE_DIR = f"{c.DATA_DIR}/serve"
ANNOTATION_OUTPUTS_HASH = f"{c.GROUP}/outputs-hash"
API_KEY_ENV = contract.ENV_SERVE_API_KEY


def selector(job: JobRef) -> dict[str, str]:
    return {c.LABEL_JOB: job.name, c.LABEL_COMPONENT: COMPONENT}


def model_name(job: JobRef, serve: ServeSpec) -> str:
    return serve.served_model_name or job.name


def outputs_hash(spec: FineTuneJobSpec, status: dict[str, Any]) -> str:
    """What the replicas serve: a new run's outputs or a new serve spec change it."""
    assert spec.serve is not None
    payload = {
        "outputs": status.get("outputs"),
        "completionTime": status.get("completionTime"),
        "serve": spec.serve.model_dump(mode="json", by_alias=True),
        "image": spec.image,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _merged_source(spec: FineTuneJobSpec, status: dict[str, Any]) -> S3Source | None:
    """The uploaded merged model, when the job publishes one."""
    out = spec.output
    if out is None or not out.merge:
        return None
    merged = contract.OUTPUT_MERGED
    uri = (status.get("outputs") or {}).get(merged) or f"{out.uri}/{merged}/"
    return out.model_copy(update={"uri": uri.rstrip("/")})  # endpoint, region, credentials


def _serve_command(job: JobRef, serve: ServeSpec, merged: S3Source | None) -> list[str]:
    target = SERVE_DIR if merged is not None else c.CONFIG_PATH
    command = ["finetune", "serve", target, "--host", "0.0.0.0", "--port", str(serve.port)]
    command += ["--served-model-name", model_name(job, serve)]
    if serve.max_batch is not None:
        command += ["--max-batch", str(serve.max_batch)]
    if serve.max_queue is not None:
        command += ["--max-queue", str(serve.max_queue)]
    return command


def _resources(serve: ServeSpec) -> dict[str, Any]:
    requests, limits = dict(serve.resources.requests), dict(serve.resources.limits)
    gpus = serve.resources.gpus
    count = 1 if gpus is True else (0 if gpus in (None, False) else int(gpus))
    if count:
        requests[c.GPU_RESOURCE] = limits[c.GPU_RESOURCE] = str(count)
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def _probe(path: str, serve: ServeSpec, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
    }


def _storage(
    job: JobRef, spec: FineTuneJobSpec, image: str, merged: S3Source | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(mounts, volumes, init containers): the merged model fetched from S3, or the
    checkpoint volume (read-only) with the effective config and the base model it names."""
    mounts: list[dict[str, Any]] = [{"name": "data", "mountPath": c.DATA_DIR}]
    volumes: list[dict[str, Any]] = [{"name": "data", "emptyDir": {}}]
    init = []
    if merged is not None:
        init.append(build_fetch_container("fetch-merged", image, merged, SERVE_DIR))
    else:
        mounts += [
            {"name": "config", "mountPath": c.CONFIG_DIR, "readOnly": True},
            {"name": "checkpoints", "mountPath": c.CHECKPOINT_DIR, "readOnly": True},
        ]
        volumes += [
            config_volume(job),
            {
                "name": "checkpoints",
                "persistentVolumeClaim": {
                    "claimName": names.claim_name(job, spec),
                    "readOnly": True,
                },
            },
        ]
        if spec.model is not None:  # the base model the adapter sits on
            init.append(build_fetch_container("fetch-model", image, spec.model, c.MODEL_DIR))
    return mounts, volumes, init


def _pod_spec(
    job: JobRef, spec: FineTuneJobSpec, status: dict[str, Any], settings: PodSettings
) -> dict[str, Any]:
    serve = spec.serve
    assert serve is not None
    image = serve.image or spec.image or settings.default_image
    merged = _merged_source(spec, status)
    mounts, volumes, init = _storage(job, spec, image, merged)
    env: list[dict[str, Any]] = [{"name": contract.ENV_CACHE, "value": c.CACHE_DIR}]
    if serve.api_key_secret_ref is not None:
        ref = serve.api_key_secret_ref
        env.append(
            {
                "name": API_KEY_ENV,
                "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
            }
        )
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "command": _serve_command(job, serve, merged),
        "env": env,
        "ports": [{"name": "http", "containerPort": serve.port, "protocol": "TCP"}],
        "readinessProbe": _probe(contract.READY_PATH, serve, period=5, failures=3),
        "livenessProbe": _probe(contract.HEALTH_PATH, serve, period=10, failures=6),
        "startupProbe": _probe(contract.HEALTH_PATH, serve, period=5, failures=60),
        "volumeMounts": mounts,
        "securityContext": container_security(),
    }
    resources = _resources(serve)
    if resources:
        container["resources"] = resources
    for each in [container, *init]:
        if spec.image_pull_policy:
            each["imagePullPolicy"] = spec.image_pull_policy
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        # Locked down like the workers, without naming a UID a restricted policy may forbid.
        "securityContext": pod_security(settings),
        "containers": [container],
        "volumes": volumes,
    }
    if init:
        pod["initContainers"] = init
    optional = {
        "nodeSelector": spec.node_selector or None,
        "tolerations": spec.tolerations or None,
        "imagePullSecrets": [s.model_dump() for s in spec.image_pull_secrets] or None,
    }
    pod |= {key: value for key, value in optional.items() if value is not None}
    return pod


def build_serving_deployment(
    job: JobRef, spec: FineTuneJobSpec, status: dict[str, Any], settings: PodSettings
) -> dict[str, Any]:
    """The `finetune serve` replicas of a succeeded job (spec.serve must be set)."""
    assert spec.serve is not None
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_metadata(job, names.serving_name(job), COMPONENT),
        "spec": {
            "replicas": spec.serve.replicas,
            "selector": {"matchLabels": selector(job)},
            "template": {
                "metadata": {
                    "labels": labels(job, COMPONENT),
                    "annotations": {ANNOTATION_OUTPUTS_HASH: outputs_hash(spec, status)},
                },
                "spec": _pod_spec(job, spec, status, settings),
            },
        },
    }


def build_serving_service(job: JobRef, spec: FineTuneJobSpec) -> dict[str, Any]:
    """Load-balances the API across the ready replicas."""
    assert spec.serve is not None
    port = spec.serve.port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(job, names.serving_name(job), COMPONENT),
        "spec": {
            "type": spec.serve.service_type,
            "selector": selector(job),
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def endpoint(job: JobRef, spec: FineTuneJobSpec) -> str:
    assert spec.serve is not None
    return f"http://{names.serving_name(job)}.{job.namespace}.svc:{spec.serve.port}/v1"


@dataclass
class ServingDecision:
    create: list[dict[str, Any]] = field(default_factory=list)
    update: list[dict[str, Any]] = field(default_factory=list)
    status: dict[str, Any] | None = None


def decide(
    job: JobRef,
    spec: FineTuneJobSpec,
    status: dict[str, Any],
    deployment: dict[str, Any] | None,
    service: dict[str, Any] | None,
    settings: PodSettings,
) -> ServingDecision:
    """For a Succeeded job with spec.serve: create what is missing, update a Deployment
    whose template no longer matches (new outputs, edited serve spec), report status.

    Pure. Jobs without spec.serve or not Succeeded get an empty decision.
    """
    out = ServingDecision()
    if spec.serve is None or status.get("phase") != "Succeeded":
        return out
    want = build_serving_deployment(job, spec, status, settings)
    if deployment is None:
        out.create.append(want)
    elif _template_hash(deployment) != _template_hash(want) or _replicas(deployment) != (
        spec.serve.replicas
    ):
        out.update.append(want)
    if service is None:
        out.create.append(build_serving_service(job, spec))
    observed = (deployment or {}).get("status") or {}
    out.status = {
        "endpoint": endpoint(job, spec),
        "model": model_name(job, spec.serve),
        "replicas": spec.serve.replicas,
        "readyReplicas": int(observed.get("readyReplicas") or 0) if deployment else 0,
        "outputsHash": outputs_hash(spec, status),
    }
    return out


def _template_hash(deployment: dict[str, Any]) -> str | None:
    template = (deployment.get("spec") or {}).get("template") or {}
    return ((template.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_OUTPUTS_HASH)


def _replicas(deployment: dict[str, Any]) -> int | None:
    return (deployment.get("spec") or {}).get("replicas")
