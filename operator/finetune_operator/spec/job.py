"""FineTuneJobSpec: what a FineTuneJob asks for (camelCase on the wire), and its
cross-field rules. The CRD's OpenAPI schema for everything but `spec.config` is generated
from it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from finetune_operator import constants as c
from finetune_operator.cel_rules import SPEC_RULES
from finetune_operator.pod_template import PodTemplate
from finetune_operator.spec.base import SpecModel
from finetune_operator.spec.run_policy import RunPolicy
from finetune_operator.spec.serve import ServeSpec
from finetune_operator.spec.storage import S3Output, S3Source, Storage
from finetune_operator.spec.workers import EnvVar, LocalObjectReference, Resources


class FineTuneJobSpec(SpecModel):
    """What a FineTuneJob asks for."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": SPEC_RULES})

    config: dict[str, Any] | str = Field(
        description="The training config (canonical or axolotl-style), inline or as YAML text."
    )
    image: str | None = Field(None, description="Runtime image; default: the operator's.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)
    nodes: int = Field(1, ge=1, le=512, description="Gang size: worker pods, one per node.")
    nproc_per_node: int | None = Field(
        None, ge=1, le=64, description="Training processes per pod (default 1, or resources.gpus)."
    )
    resources: Resources = Field(default_factory=Resources)
    storage: Storage = Field(default_factory=Storage)
    dataset: S3Source | None = None
    model: S3Source | None = None
    output: S3Output | None = Field(
        None, description="Upload the trained weights here once training succeeded."
    )
    env: list[EnvVar] = Field(default_factory=list, max_length=128)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = None
    scheduler_name: str | None = None
    service_account_name: str | None = None
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    pod_template: PodTemplate | None = Field(
        None, description="Worker pod customisation merged onto what the operator builds."
    )
    serve: ServeSpec | None = Field(
        None, description="Serve the trained model (OpenAI API) once the job succeeded."
    )

    @field_validator("env")
    @classmethod
    def _unique_env(cls, value: list[EnvVar]) -> list[EnvVar]:
        seen: set[str] = set()
        for item in value:
            if item.name in seen:
                raise ValueError(f"{item.name} is listed twice")
            seen.add(item.name)
        return value

    @model_validator(mode="after")
    def _scheduling(self) -> FineTuneJobSpec:
        policy = self.run_policy.scheduling_policy
        if policy is None:
            return self
        if policy.min_available is not None and policy.min_available > self.nodes:
            raise ValueError(
                f"runPolicy.schedulingPolicy.minAvailable ({policy.min_available}) exceeds "
                f"nodes ({self.nodes}): a gang cannot need more workers than it has"
            )
        if policy.priority_class is not None and self.priority_class_name is not None:
            raise ValueError(
                "set priorityClassName or runPolicy.schedulingPolicy.priorityClass, not both"
            )
        if policy.queue is not None and policy.scheduler != "volcano":
            raise ValueError(
                "runPolicy.schedulingPolicy.queue is a Volcano queue: it needs scheduler: volcano"
            )
        return self

    @property
    def priority_class(self) -> str | None:
        """The workers' PriorityClass, from either field."""
        policy = self.run_policy.scheduling_policy
        return self.priority_class_name or (policy.priority_class if policy else None)

    @model_validator(mode="after")
    def _gpus_match_procs(self) -> FineTuneJobSpec:
        gpus = self.resources.gpus
        counted = isinstance(gpus, int) and not isinstance(gpus, bool) and gpus > 0
        if counted and self.nproc_per_node is not None and self.nproc_per_node != gpus:
            raise ValueError(
                f"resources.gpus ({gpus}) and nprocPerNode ({self.nproc_per_node}) differ: "
                "torchrun starts one process per GPU, so set them equal (or drop one)"
            )
        if gpus not in (None, False, 0) and (
            c.GPU_RESOURCE in self.resources.limits or c.GPU_RESOURCE in self.resources.requests
        ):
            raise ValueError(
                f"set GPUs either with resources.gpus or with {c.GPU_RESOURCE} in "
                "requests/limits, not both"
            )
        modes = self.storage.access_modes
        if self.nodes > 1 and modes is not None and "ReadWriteMany" not in modes:
            raise ValueError(
                f"storage.accessModes {modes}: a gang of {self.nodes} nodes shares the "
                "checkpoint volume; include ReadWriteMany (or use storage.existingClaim)"
            )
        return self

    @property
    def procs_per_node(self) -> int:
        if self.nproc_per_node is not None:
            return self.nproc_per_node
        gpus = self.resources.gpus
        if isinstance(gpus, int) and not isinstance(gpus, bool) and gpus > 0:
            return gpus
        return 1

    @property
    def gpus_per_node(self) -> int:
        """GPUs each worker requests through resources.gpus (0 when not used)."""
        gpus = self.resources.gpus
        if gpus is True:
            return self.procs_per_node
        if gpus is None or gpus is False:
            return 0
        return int(gpus)
