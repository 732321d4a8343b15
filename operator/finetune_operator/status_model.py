"""FineTuneJob `status` as pydantic models: the one spelling of what the operator writes.

The CRD's status schema is generated from `FineTuneJobStatus` (crd.py), and every status
a reconcile cycle decides is validated against it (`check_status`, from Cycle.finish), so
a field the reconciler writes but the CRD does not declare (which the apiserver would
silently prune) fails the tests instead. Optional fields are absent, never null: the
operator removes a key rather than writing null (see controller.merge_patch).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from finetune_operator.status import CONDITION_TYPES, PHASES


def _rfc3339(value: str) -> str:
    datetime.fromisoformat(value.replace("Z", "+00:00"))  # ValueError: not a timestamp
    return value


def _one_of(values: tuple[str, ...]) -> Any:
    def check(value: str) -> str:
        if value not in values:
            raise ValueError(f"{value!r} is not one of {', '.join(values)}")
        return value

    return AfterValidator(check)


Timestamp = Annotated[
    str, AfterValidator(_rfc3339), WithJsonSchema({"type": "string", "format": "date-time"})
]
Phase = Annotated[str, _one_of(PHASES), WithJsonSchema({"type": "string", "enum": list(PHASES)})]
ConditionType = Annotated[
    str,
    _one_of(CONDITION_TYPES),
    WithJsonSchema({"type": "string", "enum": list(CONDITION_TYPES)}),
]
ConditionStatus = Annotated[
    str,
    _one_of(("True", "False", "Unknown")),
    WithJsonSchema({"type": "string", "enum": ["True", "False", "Unknown"]}),
]


class _Status(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=False)


class Condition(_Status):
    """A condition: a phase, Queued/Admitted/PodsReady, or kstatus's Ready/Reconciling/Stalled."""

    type: ConditionType
    status: ConditionStatus
    reason: str | None = None
    message: str | None = None
    last_transition_time: Timestamp | None = None


class Workers(_Status):
    """Workers of the current attempt."""

    active: int | None = None
    succeeded: int | None = None
    failed: int | None = None


class LastCheckpoint(_Status):
    """The newest complete checkpoint rank 0 wrote."""

    step: int | None = None
    path: str | None = None
    time: Timestamp | None = None


class Progress(_Status):
    """Live training progress polled from rank 0."""

    state: str | None = Field(None, description="Rank 0's training state.")
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    percent: float | None = Field(None, description="Percent of total steps done.")
    eta: str | None = Field(None, description="Estimated time left, e.g. 1h2m.")
    updated_at: Timestamp | None = None
    last_checkpoint: LastCheckpoint | None = None


class Startup(_Status):
    model_config = ConfigDict(
        json_schema_extra={
            "description": "Why the workers cannot start yet (absent once they can); the job "
            "fails after spec.runPolicy.startupTimeoutSeconds of it."
        }
    )

    reason: str | None = Field(None, description="CreateRejected, Unschedulable, ErrImagePull, ...")
    message: str | None = None
    since: Timestamp | None = None
    retries: int | None = Field(None, description="Refused create attempts so far.")
    next_retry: Timestamp | None = None
    problem_since: Timestamp | None = None
    reported: bool | None = Field(None, description="A Warning event was posted for this reason.")


class Outputs(_Status):
    """Where rank 0 uploaded the results (spec.output), once the job succeeded."""

    adapter: str | None = Field(None, description="The trained adapter (s3:// prefix).")
    model: str | None = Field(None, description="The fully fine-tuned model (s3:// prefix).")
    merged: str | None = Field(None, description="The adapter merged into the base model.")


class Serving(_Status):
    """spec.serve's inference replicas, once the job succeeded."""

    endpoint: str | None = Field(None, description="OpenAI API base URL of the Service.")
    model: str | None = Field(None, description="The `model` name clients send.")
    replicas: int | None = None
    ready_replicas: int | None = None
    outputs_hash: str | None = Field(None, description="What the replicas serve (rolls on change).")


class FineTuneJobStatus(_Status):
    """Observed state, written by the operator."""

    phase: Phase | None = None
    conditions: list[Condition] | None = None
    observed_generation: int | None = Field(None, json_schema_extra={"format": "int64"})
    start_time: Timestamp | None = None
    completion_time: Timestamp | None = None
    attempt: int | None = Field(None, description="The current gang attempt (1 = first).")
    restarts: int | None = Field(None, description="Gang restarts after worker failures.")
    workers: Workers | None = None
    progress: Progress | None = None
    startup: Startup | None = None
    outputs: Outputs | None = None
    serving: Serving | None = None


class _AbsentNotNull(GenerateJsonSchema):
    """`X | None` as plain X: status keys are left out, never written as null."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])


def status_json_schema() -> dict[str, Any]:
    """The JSON schema of `status` (camelCase), for crd.py to make structural."""
    return FineTuneJobStatus.model_json_schema(by_alias=True, schema_generator=_AbsentNotNull)


def check_status(status: dict[str, Any]) -> None:
    """Raise (pydantic ValidationError) when a decided status does not fit the CRD."""
    FineTuneJobStatus.model_validate(status)
