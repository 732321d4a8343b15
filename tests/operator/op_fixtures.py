"""Plain-dict builders for FineTuneJobs, pods and observations (no I/O)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from finetune_operator import manifests as m
from finetune_operator.reconcile import Decision, Observed, reconcile
from finetune_operator.spec import parse_spec

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
SETTINGS = m.PodSettings(default_image="runtime:test", progress_port=9400)
CONFIG: dict[str, Any] = {
    "base_model": "builtin:tiny-llama",
    "datasets": [{"path": "train.jsonl"}],
    "training": {"max_steps": 10},
}


# A ProgressDocument as rank 0 serves it.
DOC = {
    "state": "training",
    "step": 30,
    "totalSteps": 120,
    "epoch": 0.75,
    "loss": 1.23456,
    "evalLoss": 1.5,
    "learningRate": 0.0002,
    "tokensPerSecond": 1234.56,
    "progress": 25.0,
    "etaSeconds": 3725,
    "lastCheckpoint": {
        "step": 20,
        "path": "/checkpoints/checkpoint-20",
        "time": "2025-01-01T11:59:00Z",
    },
    "worldSize": 2,
    "updatedAt": "2025-01-01T12:00:00Z",
}

# A spec using every field.
FULL_SPEC = {
    "image": "registry.example.com/finetune-runtime:1.2.3",
    "imagePullPolicy": "IfNotPresent",
    "imagePullSecrets": [{"name": "regcred"}, {"name": "other"}],
    "nodes": 3,
    "resources": {
        "gpus": 4,
        "requests": {"cpu": 16, "memory": "128Gi"},
        "limits": {"memory": "160Gi"},
    },
    "storage": {"size": "500Gi", "storageClassName": "fast-rwx", "accessModes": ["ReadWriteMany"]},
    "dataset": {
        "uri": "s3://datasets/alpaca",
        "endpoint": "https://minio.example.com",
        "region": "eu-west-1",
        "secretRef": {"name": "s3", "accessKeyIdKey": "id", "secretAccessKeyKey": "key"},
    },
    "model": {"uri": "s3://models/llama-3-8b", "secretRef": {"name": "s3"}},
    "env": [
        {"name": "NCCL_DEBUG", "value": "INFO"},
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
    ],
    "nodeSelector": {"nvidia.com/gpu.product": "H100"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchLabels": {"finetune.dev/job": "llama"}},
                }
            ]
        }
    },
    "priorityClassName": "training",
    "schedulerName": "volcano",
    "serviceAccountName": "trainer",
}


def job(
    spec: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
    name: str = "llama",
    namespace: str = "ml",
    generation: int = 1,
    **meta: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "generation": generation,
            **meta,
        },
        "spec": {"config": copy.deepcopy(CONFIG), **(spec or {})},
    }
    if status is not None:
        body["status"] = status
    return body


def ref(body: dict[str, Any]) -> m.JobRef:
    return m.JobRef.from_body(body)


def pod(
    body: dict[str, Any],
    attempt: int,
    rank: int,
    phase: str = "Pending",
    ip: str | None = None,
    exit_code: int | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    """A worker pod exactly as the operator builds it, with a kubelet-set status."""
    spec = parse_spec(body["spec"])
    out = m.build_worker_pod(ref(body), spec, attempt, rank, SETTINGS)
    out["status"] = {"phase": phase}
    if ip:
        out["status"]["podIP"] = ip
    if exit_code is not None:
        out["status"]["containerStatuses"] = [
            {
                "name": "trainer",
                "state": {"terminated": {"exitCode": exit_code, "reason": "Error"}},
            }
        ]
    if deleting:
        out["metadata"]["deletionTimestamp"] = "2025-01-01T11:59:00Z"
    return out


def gang(body: dict[str, Any], attempt: int, *phases: str) -> list[dict[str, Any]]:
    return [
        pod(body, attempt, rank, phase, ip=f"10.0.0.{rank + 1}" if phase == "Running" else None)
        for rank, phase in enumerate(phases)
    ]


def children(body: dict[str, Any], config_yaml: str | None = None) -> dict[str, Any]:
    """ConfigMap, Service and PVC as they exist after the first cycle."""
    first = reconcile(job_without_status(body), Observed(), NOW, SETTINGS)
    made = {manifest["kind"]: manifest for manifest in first.create}
    config_map = made.get("ConfigMap")
    if config_map is not None and config_yaml is not None:
        config_map = {**config_map, "data": {"config.yaml": config_yaml}}
    return {
        "config_map": config_map,
        "service": made.get("Service"),
        "claim": made.get("PersistentVolumeClaim") or {"metadata": {"name": "existing"}},
    }


def job_without_status(body: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(body)
    out.pop("status", None)
    return out


def observed(body: dict[str, Any], pods: list[dict[str, Any]] | None = None, **kw: Any) -> Observed:
    fields = children(body)
    fields.update(kw)
    return Observed(pods=pods or [], **fields)


def run(body: dict[str, Any], obs: Observed | None = None, now: datetime = NOW) -> Decision:
    return reconcile(body, obs if obs is not None else observed(body), now, SETTINGS)


def after(body: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """The job as it is once the decision's status has been written."""
    out = copy.deepcopy(body)
    out["status"] = copy.deepcopy(decision.status)
    return out


def later(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == type_)


def created_pods(decision: Decision) -> list[dict[str, Any]]:
    return [x for x in decision.create if x["kind"] == "Pod"]


def deleted_pods(decision: Decision) -> list[str]:
    return sorted(r.name for r in decision.delete if r.kind == "Pod")
