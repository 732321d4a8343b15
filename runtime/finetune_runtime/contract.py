"""The pod contract: every name and rule that crosses the operator/runtime boundary.

The operator writes worker and serving pods; the `finetune` CLI inside them reads what
the operator wrote. Both sides import the names below instead of spelling them, so a
rename is one edit and a test catches a mismatch. Stdlib only at import time (the merge
rule asks the config schema, pydantic, when called): the operator imports it without torch,
the `finetune` CLI without pydantic.

Groups: ports and HTTP paths, mount paths, environment names (written by the operator,
read by the runtime), the output layout under `output_dir` and an output URI, exit codes
the operator classifies, and the shared rules (`merge_refusal`, `output_uris`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from finetune_runtime.errors import (  # noqa: F401 (re-exported: see "exit codes" below)
    PERMANENT_EXIT_CODES as PERMANENT_EXIT_CODES,
)
from finetune_runtime.errors import USER_ERROR_EXIT_CODES as USER_ERROR_EXIT_CODES

# ------------------------------------------------------------------------------ ports, paths

PROGRESS_PORT = 9400  # rank 0's progress server (the operator's --progress-port default)
PROGRESS_PATH = "/progress"  # JSON ProgressDocument
METRICS_PATH = "/metrics"  # Prometheus
HEALTH_PATH = "/healthz"  # progress server and `finetune serve`: the process answers
READY_PATH = "/readyz"  # `finetune serve`: the model is loaded
RENDEZVOUS_PORT = 29500  # torchrun's static rendezvous on worker 0

# Mount paths inside worker and serving pods.
CONFIG_DIR = "/etc/finetune"  # the effective config (ConfigMap <job>-config), read-only
CONFIG_KEY = "config.yaml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
CHECKPOINT_DIR = "/checkpoints"  # the checkpoint volume: output_dir of every attempt
DATA_DIR = "/data"  # per-pod scratch volume the init containers fetch into
DATASET_DIR = f"{DATA_DIR}/dataset"  # `finetune fetch` of spec.dataset
MODEL_DIR = f"{DATA_DIR}/model"  # `finetune fetch` of spec.model (the base model)
CACHE_DIR = f"{DATA_DIR}/cache"  # $FINETUNE_CACHE in pods
SHM_DIR = "/dev/shm"  # memory-backed, for NCCL and dataloader workers

# ----------------------------------------------------------------------- environment names

# torchrun's own PET_<FLAG> variables: where this pod sits in the gang.
ENV_NNODES = "PET_NNODES"
ENV_NODE_RANK = "PET_NODE_RANK"
ENV_NPROC_PER_NODE = "PET_NPROC_PER_NODE"
ENV_MASTER_ADDR = "PET_MASTER_ADDR"
ENV_MASTER_PORT = "PET_MASTER_PORT"
ENV_PROGRESS_PORT = "FINETUNE_PROGRESS_PORT"
ENV_ATTEMPT = "FINETUNE_ATTEMPT"  # the gang's attempt number (in /progress and the logs)
ENV_JOB_NAME = "FINETUNE_JOB_NAME"  # the FineTuneJob's name (in /progress and the logs)
ENV_CACHE = "FINETUNE_CACHE"  # where builtin models and s3:// downloads are cached
# Where rank 0 publishes the finished weights (`finetune train --output-uri` and friends).
ENV_OUTPUT_URI = "FINETUNE_OUTPUT_URI"
ENV_OUTPUT_MERGE = "FINETUNE_OUTPUT_MERGE"
ENV_OUTPUT_ENDPOINT_URL = "FINETUNE_OUTPUT_ENDPOINT_URL"
ENV_OUTPUT_REGION = "FINETUNE_OUTPUT_REGION"
# S3 credentials: always secretKeyRefs in pods, never values.
ENV_AWS_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
ENV_AWS_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"
ENV_SERVE_API_KEY = "FINETUNE_SERVE_API_KEY"  # `finetune serve`'s bearer token (a secretKeyRef)

# What the operator writes into a worker's trainer container: users may not override these
# (spec.env and the pod template are refused, by pydantic and by the CRD's CEL rule).
WORKER_ENV = frozenset(
    {
        ENV_NNODES,
        ENV_NODE_RANK,
        ENV_NPROC_PER_NODE,
        ENV_MASTER_ADDR,
        ENV_MASTER_PORT,
        ENV_PROGRESS_PORT,
        ENV_ATTEMPT,
        ENV_CACHE,
        ENV_JOB_NAME,
        ENV_OUTPUT_URI,
        ENV_OUTPUT_MERGE,
        ENV_OUTPUT_ENDPOINT_URL,
        ENV_OUTPUT_REGION,
        ENV_AWS_ACCESS_KEY_ID,
        ENV_AWS_SECRET_ACCESS_KEY,
    }
)

# Experiment-tracker credentials: the operator accepts them only as secret references, the
# runtime redacts them from every log line.
SECRET_ONLY_ENV = frozenset({"WANDB_API_KEY", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD"})

# Runtime knobs the operator never sets (a user may, through spec.env).
ENV_EXIT_FILE = "FINETUNE_EXIT_FILE"  # `finetune launch` -> its trainers: the exit code file
ENV_RENDEZVOUS_TIMEOUT = "FINETUNE_RENDEZVOUS_TIMEOUT"  # seconds to wait for worker 0
ENV_PROGRESS_HOST = "FINETUNE_PROGRESS_HOST"  # the progress server's bind address
ENV_LOCK_WAIT = "FINETUNE_LOCK_WAIT"  # seconds to wait for output_dir's lock
ENV_S3_ADDRESSING_STYLE = "FINETUNE_S3_ADDRESSING_STYLE"  # auto | path | virtual
ENV_DS_CPU_ADAM = "FINETUNE_DS_CPU_ADAM"  # 1: DeepSpeedCPUAdam under optimizer offload

# ---------------------------------------------------------------------------- output layout

# Under output_dir (and, uploaded, under an output URI): exactly one of adapter/ or model/,
# plus merged/ when the adapter was merged into its base model.
OUTPUT_ADAPTER = "adapter"  # a LoRA/QLoRA/prompt-learning adapter (+ tokenizer)
OUTPUT_MODEL = "model"  # a full fine-tune's weights (adapter: none)
OUTPUT_MERGED = "merged"  # the adapter folded into the base model
FULL_FINETUNE = "none"  # the config's `adapter` value for a full fine-tune


def weights_dir_name(adapter: str) -> str:
    """`model` for a full fine-tune, `adapter` otherwise: where the final weights go."""
    return OUTPUT_MODEL if adapter == FULL_FINETUNE else OUTPUT_ADAPTER


def output_uris(uri: str, weights: str, merge: bool) -> dict[str, str]:
    """{"adapter"|"model": URI, "merged": URI}: where rank 0 uploads each part (pure).

    `weights` is `weights_dir_name(adapter)`. The operator reports the same map in
    `status.outputs`."""
    base = uri.rstrip("/")
    out = {weights: f"{base}/{weights}/"}
    if merge:
        out[OUTPUT_MERGED] = f"{base}/{OUTPUT_MERGED}/"
    return out


def merge_refusal(adapter: str) -> str | None:
    """Why `merge` cannot work for this adapter type, or None: merging needs an adapter
    made of weight deltas. The operator refuses the spec; `finetune train --merge` refuses
    before training."""
    from finetune_runtime.config import unmergeable_reason  # pydantic: only when asked

    if adapter == FULL_FINETUNE:
        return (
            "a full fine-tune (adapter: none) has no adapter to merge; its model is uploaded "
            "as it is"
        )
    return unmergeable_reason(adapter)


# ------------------------------------------------------------------- reading the pod's env


def cache_root(env: Mapping[str, str] | None = None) -> Path:
    """$FINETUNE_CACHE, else ~/.cache/finetune: builtin models and s3:// downloads."""
    env = os.environ if env is None else env
    root = env.get(ENV_CACHE) or os.path.join(os.path.expanduser("~"), ".cache", "finetune")
    return Path(root)


def run_identity(env: Mapping[str, str] | None = None) -> tuple[str | None, int | None]:
    """(job name, attempt) the operator gave this pod; (None, None) outside a FineTuneJob.

    An attempt that is not a number is ignored (None), never fatal: it only labels."""
    env = os.environ if env is None else env
    job = env.get(ENV_JOB_NAME, "").strip() or None
    raw = env.get(ENV_ATTEMPT, "").strip()
    attempt = int(raw) if raw.isdigit() else None
    return job, attempt


# ------------------------------------------------------------------------------ exit codes
# Defined in the dependency-free `errors` (every runtime error class carries one); named
# here because the operator reads them off a terminated worker: the permanent ones fail the
# job instead of restarting the gang (restartPolicy OnFailure and ExitCode both honour it).
