"""Names shared by the CRD, the manifests, the reconciler and the kopf shell."""

from __future__ import annotations

from typing import Any

from finetune_runtime import contract

GROUP = "finetune.dev"
VERSION = "v1alpha1"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAME = "ftj"
API_VERSION = f"{GROUP}/{VERSION}"

# Labels every child carries; pods also carry attempt and rank.
LABEL_NAME = "app.kubernetes.io/name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_JOB = f"{GROUP}/job"
LABEL_ATTEMPT = f"{GROUP}/attempt"
LABEL_RANK = f"{GROUP}/rank"
# What the workers were built from (spec minus runPolicy, plus the effective config).
ANNOTATION_SPEC_HASH = f"{GROUP}/spec-hash"
APP_NAME = "finetune"
MANAGER = "finetune-operator"

# Where things live inside a worker pod, and its ports: the pod contract, shared with the
# runtime that reads them (finetune_runtime.contract).
CONFIG_DIR = contract.CONFIG_DIR
CONFIG_KEY = contract.CONFIG_KEY
CONFIG_PATH = contract.CONFIG_PATH
CHECKPOINT_DIR = contract.CHECKPOINT_DIR
DATA_DIR = contract.DATA_DIR
DATASET_DIR = contract.DATASET_DIR
MODEL_DIR = contract.MODEL_DIR
CACHE_DIR = contract.CACHE_DIR

RENDEZVOUS_PORT = contract.RENDEZVOUS_PORT
TRAINER_CONTAINER = "trainer"
# The runtime image's numeric USER/GROUP (images/runtime/Dockerfile); pods never set
# runAsUser, only (by default, see PodSettings.fs_group) this fsGroup.
DEFAULT_FS_GROUP = 1000

# Environment names the operator owns in worker pods; users may not override them.
RESERVED_ENV = contract.WORKER_ENV
# The same refusal at admission (CEL on an env var's name) and in the operator's check;
# spec.env and spec.podTemplate.env both use it.
RESERVED_ENV_RULE: dict[str, Any] = {
    "rule": "!(self in [" + ", ".join(f"'{name}'" for name in sorted(RESERVED_ENV)) + "])",
    "message": "this environment variable is set by the operator",
}


def refuse_reserved_env(name: str) -> str:
    """`name`, unless the operator sets it in every worker (then ValueError)."""
    if name in RESERVED_ENV:
        raise ValueError(f"{name} is set by the operator and cannot be overridden")
    return name


# Experiment-tracker credentials (the runtime's `tracking`): only as secret references.
SECRET_ONLY_ENV = contract.SECRET_ONLY_ENV

GPU_RESOURCE = "nvidia.com/gpu"

# A DNS-1123 label is at most 63 characters; `<job>-worker-<rank>` is a pod hostname.
MAX_LABEL = 63
