"""What each worker pod gets: resources, extra environment, Secret and pull-secret refs."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from finetune_operator import constants as c
from finetune_operator.spec.base import ENV_NAME, Quantity, SpecModel


class Resources(SpecModel):
    """Container resources of each worker. `gpus` sets nvidia.com/gpu requests and limits."""

    requests: dict[str, Quantity] = Field(default_factory=dict)
    limits: dict[str, Quantity] = Field(default_factory=dict)
    gpus: int | bool | None = Field(
        None,
        description="GPUs per worker pod: true = nprocPerNode, a number = that many "
        "(nprocPerNode then defaults to it), false/0 = none.",
    )

    @field_validator("gpus")
    @classmethod
    def _non_negative(cls, value: int | bool | None) -> int | bool | None:
        if not isinstance(value, bool) and isinstance(value, int) and value < 0:
            raise ValueError("must be >= 0")
        return value


class EnvVar(SpecModel):
    """An extra environment variable for the trainer container (Kubernetes EnvVar form)."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        frozen=True,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.value) && has(self.valueFrom))",
                    "message": "set value or valueFrom, not both",
                }
            ]
        },
    )

    name: str = Field(
        max_length=256,
        json_schema_extra={
            "pattern": ENV_NAME.pattern,
            "x-kubernetes-validations": [c.RESERVED_ENV_RULE],
        },
    )
    value: str | None = None
    valueFrom: dict[str, Any] | None = None  # noqa: N815 - the Kubernetes field name

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not ENV_NAME.match(value):
            raise ValueError(f"{value!r} is not a valid environment variable name")
        return c.refuse_reserved_env(value)

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        if self.value is not None and self.valueFrom is not None:
            raise ValueError(f"{self.name}: set value or valueFrom, not both")
        if self.name in c.SECRET_ONLY_ENV and "secretKeyRef" not in (self.valueFrom or {}):
            raise ValueError(
                f"{self.name} is a credential: give it as valueFrom.secretKeyRef (a Secret "
                "reference), never as a literal value"
            )
        return self


class SecretKeyRef(SpecModel):
    """One key of a Secret in the job's namespace."""

    name: str = Field(min_length=1)
    key: str = Field(min_length=1)


class LocalObjectReference(SpecModel):
    name: str = Field(min_length=1)
