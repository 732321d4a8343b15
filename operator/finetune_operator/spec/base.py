"""Shared pieces of the spec models: the frozen camelCase base, quantities, defaults."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, WithJsonSchema
from pydantic.alias_generators import to_camel

QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[numkMGTPE]|[KMGTPE]i)?$")
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$")

DEFAULT_STORAGE_SIZE = "10Gi"
# torchrun's shutdown timeout (30 s) plus time to write one checkpoint.
DEFAULT_GRACE_SECONDS = 120
DEFAULT_STARTUP_TIMEOUT_SECONDS = 600


def _quantity(value: Any) -> str:
    if isinstance(value, bool):
        raise ValueError("must be a quantity such as 4, 500m, 16Gi")
    if isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str) or not QUANTITY.match(value.strip()):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 4, 500m, 16Gi)")
    return value.strip()


Quantity = Annotated[
    str,
    BeforeValidator(_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "pattern": QUANTITY.pattern,
        }
    ),
]


class SpecModel(BaseModel):
    model_config = ConfigDict(
        extra="forbid", populate_by_name=False, alias_generator=to_camel, frozen=True
    )
