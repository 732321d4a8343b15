"""Why a gang cannot start, and how long the operator keeps trying (pure).

A worker can be stuck before it runs: the API refused to create it (quota, PodSecurity,
a webhook, an invalid field), the scheduler finds no node (Unschedulable), the image
cannot be pulled, or a referenced Secret/ConfigMap is missing. Each becomes the reason of
the `PodsReady` condition; refused creates are retried with exponential backoff; the job
fails once its workers have been stuck for spec.runPolicy.startupTimeoutSeconds.
Waiting in a Kueue queue (a scheduling gate) or for a gang scheduler is not "stuck".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from finetune_operator.redact import redact

CREATE_REJECTED = "CreateRejected"
UNSCHEDULABLE = "Unschedulable"
STUCK_WAITING = (
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
)
# A pod problem becomes a Warning event once it lasted this long (the condition shows it
# at once); a refused create is reported at once.
EVENT_AFTER_SECONDS = 30.0
BACKOFF_BASE_SECONDS = 5.0
BACKOFF_CAP_SECONDS = 300.0


@dataclass(frozen=True)
class Rejection:
    """A create the API server refused during the previous cycle (reported by the shell)."""

    kind: str
    name: str
    code: int
    message: str


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str


def pod_problem(pod: dict[str, Any], gang_scheduler: bool) -> Problem | None:
    """What keeps one pending worker from starting (None: nothing, or only queueing)."""
    status = pod.get("status") or {}
    name = str((pod.get("metadata") or {}).get("name", ""))
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_WAITING:
            detail = redact(str(waiting.get("message") or ""))[:300]
            text = f"pod {name} container {cs.get('name')}: {waiting['reason']}"
            return Problem(str(waiting["reason"]), f"{text}: {detail}" if detail else text)
    if gang_scheduler:
        return None  # a PodGroup waiting for room is queueing, not failing
    for cond in status.get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == UNSCHEDULABLE
        ):
            detail = redact(str(cond.get("message") or ""))[:300]
            return Problem(UNSCHEDULABLE, f"pod {name}: {detail or 'no node fits'}")
    return None


def rejection_problem(rejections: list[Rejection]) -> Problem | None:
    if not rejections:
        return None
    first = rejections[0]
    more = f" (and {len(rejections) - 1} more)" if len(rejections) > 1 else ""
    return Problem(
        CREATE_REJECTED,
        f"the API server refused to create {first.kind} {first.name}{more}: "
        f"{first.code} {redact(first.message)[:400]}",
    )


def backoff_seconds(retries: int) -> float:
    """Delay before create attempt `retries + 1`: 5 s, 10 s, 20 s, ... capped at 5 min."""
    return min(BACKOFF_BASE_SECONDS * 2 ** max(retries - 1, 0), BACKOFF_CAP_SECONDS)


def next_retry(now: datetime, retries: int) -> datetime:
    return now + timedelta(seconds=backoff_seconds(retries))
