"""Readers of worker pods: what a pod says about itself (`*_of(pod)`), pure.

Builders of pods live in `finetune_operator.manifests`; these only read what the
operator wrote (labels, annotations, env) and what the kubelet reports (phase, exit codes).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from finetune_operator import constants as c
from finetune_operator.status import RUNNING, parse_time
from finetune_runtime import contract


def attempt_of(pod: dict[str, Any]) -> int:
    try:
        return int(((pod.get("metadata") or {}).get("labels") or {}).get(c.LABEL_ATTEMPT, 0))
    except (TypeError, ValueError):
        return 0


def rank_of(pod: dict[str, Any]) -> int:
    try:
        return int(((pod.get("metadata") or {}).get("labels") or {}).get(c.LABEL_RANK, -1))
    except (TypeError, ValueError):
        return -1


def name_of(pod: dict[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("name", ""))


def spec_hash_of(pod: dict[str, Any]) -> str | None:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(c.ANNOTATION_SPEC_HASH)
    return str(value) if value is not None else None


def is_terminating(pod: dict[str, Any]) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


# How long past its deletionTimestamp (deletion time + grace period) a pod may linger
# before the operator force-deletes it: the kubelet has had the whole grace period.
FORCE_DELETE_AFTER_SECONDS = 30


def termination_overdue(pod: dict[str, Any], now: datetime) -> bool:
    """A terminating pod whose grace period ended FORCE_DELETE_AFTER_SECONDS ago (e.g. its
    node is gone, so no kubelet will ever confirm the deletion)."""
    deadline = parse_time((pod.get("metadata") or {}).get("deletionTimestamp"))
    if deadline is None:
        return False
    return (now - deadline).total_seconds() >= FORCE_DELETE_AFTER_SECONDS


def phase_of(pod: dict[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def describe_failure(pod: dict[str, Any]) -> str:
    """Why a worker failed, from its container statuses: exit code, reason, message."""
    status = pod.get("status") or {}
    parts = []
    for cs in status.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated") or {}
        if term:
            text = f"container {cs.get('name')} exited with code {term.get('exitCode')}"
            if term.get("reason"):
                text += f" ({term['reason']})"
            parts.append(text)
    if status.get("reason"):
        parts.append(str(status["reason"]))
    if status.get("message"):
        parts.append(str(status["message"])[:200])
    return f"worker {name_of(pod)} failed" + (": " + "; ".join(parts) if parts else "")


def env_of(pod: dict[str, Any], name: str) -> str | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        if container.get("name") != c.TRAINER_CONTAINER:
            continue
        for item in container.get("env") or []:
            if item.get("name") == name and "value" in item:
                return str(item["value"])
    return None


def progress_url(pods: list[dict[str, Any]], attempt: int) -> str | None:
    """Rank 0's progress endpoint for `attempt`, if that pod is running and has an IP."""
    for pod in pods:
        if attempt_of(pod) != attempt or rank_of(pod) != 0 or is_terminating(pod):
            continue
        ip = (pod.get("status") or {}).get("podIP")
        port = env_of(pod, contract.ENV_PROGRESS_PORT)
        if phase_of(pod) == RUNNING and ip and port:
            host = f"[{ip}]" if ":" in ip else ip
            return f"http://{host}:{port}{contract.PROGRESS_PATH}"
    return None
