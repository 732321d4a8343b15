"""spec.serve: inference replicas of the trained model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from finetune_operator.spec.base import SpecModel
from finetune_operator.spec.workers import Resources, SecretKeyRef


class ServeSpec(SpecModel):
    """Inference replicas of the trained model (`finetune serve`), created once the job
    succeeded: a Deployment behind a Service, rolled when a retrain writes new outputs."""

    replicas: int = Field(1, ge=0, le=100, description="`finetune serve` pods.")
    port: int = Field(8000, ge=1024, le=65535, description="Container and Service port.")
    resources: Resources = Field(default_factory=Resources)
    image: str | None = Field(None, description="Default: the job's image.")
    served_model_name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$",
        description="The `model` name clients send (default: the job's name).",
    )
    max_batch: int | None = Field(None, ge=1, le=1024, description="Sequences decoded together.")
    max_queue: int | None = Field(None, ge=1, description="Waiting sequences before 429.")
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    api_key_secret_ref: SecretKeyRef | None = Field(
        None, description="Require this bearer token (a Secret key) on /v1/*."
    )
