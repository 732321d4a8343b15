"""Pure helpers for FineTuneJob status: timestamps, conditions, pod facts, progress."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from finetune_runtime import contract
from finetune_runtime.progress.document import ProgressDocument, format_eta

PENDING = "Pending"
CREATED = "Created"
RUNNING = "Running"
RESTARTING = "Restarting"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
SUSPENDED = "Suspended"
# Gang admission and startup: Kueue's verdict, and whether the workers could start.
QUEUED = "Queued"
ADMITTED = "Admitted"
PODS_READY = "PodsReady"
PHASES = (PENDING, CREATED, RUNNING, RESTARTING, SUCCEEDED, FAILED, SUSPENDED)
ACTIVE_PHASES = (PENDING, CREATED, RUNNING, RESTARTING)
# kstatus's standard conditions (Flux `wait: true`, cli-utils, `kubectl wait`), derived from
# the phase alongside the phase conditions.
READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
CONDITION_TYPES = (
    QUEUED,
    ADMITTED,
    CREATED,
    PODS_READY,
    RUNNING,
    RESTARTING,
    SUCCEEDED,
    FAILED,
    SUSPENDED,
    READY,
    RECONCILING,
    STALLED,
)


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def get_condition(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((cond for cond in conditions if cond.get("type") == type_), None)


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: datetime,
) -> list[dict[str, Any]]:
    """Return conditions with `type_` set; lastTransitionTime moves only when status flips."""
    value = "True" if status else "False"
    old = get_condition(conditions, type_)
    changed = old is None or old.get("status") != value
    new = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": rfc3339(now) if changed else old.get("lastTransitionTime"),  # type: ignore[union-attr]
    }
    out = [cond for cond in conditions if cond.get("type") != type_]
    out.append(new)
    return sorted(out, key=lambda cond: _condition_order(cond.get("type")))


def _condition_order(type_: Any) -> int:
    return CONDITION_TYPES.index(type_) if type_ in CONDITION_TYPES else len(CONDITION_TYPES)


def clear_condition(
    conditions: list[dict[str, Any]], type_: str, reason: str, message: str, now: datetime
) -> list[dict[str, Any]]:
    """Set an existing condition to False; absent conditions stay absent."""
    if get_condition(conditions, type_) is None:
        return conditions
    return set_condition(conditions, type_, False, reason, message, now)


def kstatus_conditions(
    conditions: list[dict[str, Any]], phase: str, now: datetime
) -> list[dict[str, Any]]:
    """Set Ready/Reconciling/Stalled from the phase, so kstatus reads the job correctly.

    kstatus calls a resource InProgress while `Reconciling` is True, Failed while `Stalled`
    is True, and Current otherwise (once observedGeneration caught up): so Reconciling is
    True while the job is pending or training, Stalled when it failed, Ready when it
    succeeded. A suspended job is Current (neither), as the Argo CD health check has it.
    """
    why = get_condition(conditions, phase) or {}
    reason = str(why.get("reason") or phase)
    message = str(why.get("message") or f"The job is {phase}.")
    done = phase == SUCCEEDED
    active = phase in ACTIVE_PHASES
    failed = phase == FAILED
    out = set_condition(conditions, READY, done, reason if done else phase, message, now)
    out = set_condition(out, RECONCILING, active, reason if active else phase, message, now)
    return set_condition(out, STALLED, failed, reason if failed else phase, message, now)


def outputs_status(output: Any, adapter: str) -> dict[str, str] | None:
    """`status.outputs`: where rank 0 uploaded the weights (the URIs `finetune train
    --output-uri` writes: `<uri>/adapter/` or `<uri>/model/`, and `<uri>/merged/`)."""
    if output is None:
        return None
    weights = contract.weights_dir_name(adapter)
    return contract.output_uris(str(output.uri), weights, bool(output.merge))


# -------------------------------------------------------------------------------- progress


def _finite(value: float | None, digits: int) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def progress_status(raw: dict[str, Any]) -> dict[str, Any] | None:
    """Map rank 0's ProgressDocument JSON to `status.progress` (None if it is not one)."""
    try:
        doc = ProgressDocument.model_validate(raw)
    except ValidationError:
        return None
    out: dict[str, Any] = {
        "state": doc.state,
        "step": doc.step,
        "totalSteps": doc.total_steps,
        "epoch": _finite(doc.epoch, 3),
        "loss": _finite(doc.loss, 4),
        "evalLoss": _finite(doc.eval_loss, 4),
        "learningRate": _finite(doc.learning_rate, 10),
        "tokensPerSecond": _finite(doc.tokens_per_second, 1),
        "percent": _finite(max(0.0, min(100.0, doc.progress)), 1),
        "eta": format_eta(doc.eta_seconds),
        # Only what rank 0 stamped: a defaulted "now" would rewrite the status every poll.
        "updatedAt": rfc3339(doc.updated_at) if "updated_at" in doc.model_fields_set else None,
    }
    if doc.last_checkpoint is not None:
        out["lastCheckpoint"] = {
            "step": doc.last_checkpoint.step,
            "path": doc.last_checkpoint.path,
            "time": rfc3339(doc.last_checkpoint.time),
        }
    return {key: value for key, value in out.items() if value is not None}
