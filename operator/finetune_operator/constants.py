"""Names shared by the CRD, the manifests, the reconciler and the kopf shell."""

from __future__ import annotations

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

# Where things live inside a worker pod.
CONFIG_DIR = "/etc/finetune"
CONFIG_KEY = "config.yaml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
CHECKPOINT_DIR = "/checkpoints"
DATA_DIR = "/data"
DATASET_DIR = f"{DATA_DIR}/dataset"
MODEL_DIR = f"{DATA_DIR}/model"
CACHE_DIR = f"{DATA_DIR}/cache"

RENDEZVOUS_PORT = 29500
TRAINER_CONTAINER = "trainer"
# The runtime image's numeric USER/GROUP (images/runtime/Dockerfile); pods never set
# runAsUser, only (by default, see PodSettings.fs_group) this fsGroup.
DEFAULT_FS_GROUP = 1000

# Environment names the operator owns in worker pods; users may not override them.
RESERVED_ENV = frozenset(
    {
        "PET_NNODES",
        "PET_NODE_RANK",
        "PET_NPROC_PER_NODE",
        "PET_MASTER_ADDR",
        "PET_MASTER_PORT",
        "FINETUNE_PROGRESS_PORT",
        "FINETUNE_ATTEMPT",
        "FINETUNE_CACHE",
        "FINETUNE_JOB_NAME",
        "FINETUNE_OUTPUT_URI",
        "FINETUNE_OUTPUT_MERGE",
        "FINETUNE_OUTPUT_ENDPOINT_URL",
        "FINETUNE_OUTPUT_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    }
)

# Experiment-tracker credentials (the runtime's `tracking`): only as secret references.
SECRET_ONLY_ENV = frozenset({"WANDB_API_KEY", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD"})

GPU_RESOURCE = "nvidia.com/gpu"

# A DNS-1123 label is at most 63 characters; `<job>-worker-<rank>` is a pod hostname.
MAX_LABEL = 63
