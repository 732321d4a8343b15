"""CEL rules (`x-kubernetes-validations`) the apiserver enforces when a FineTuneJob is
written: cross-field rules of `spec`, and URLs without credentials. The pydantic models
attach them to their JSON schema (crd.py carries them into the CRD); the same rules are
checked again by the models' validators, for clusters and paths without CEL.
"""

from __future__ import annotations

import re
from typing import Any

_USERINFO = "'^[^:/]+://[^/]*@'"


def s3_rules(uri: re.Pattern[str]) -> Any:
    """On the S3 source object, not its strings: the apiserver answers a refused string
    with its value quoted, and these strings may hold credentials; for an object rule it
    quotes nothing."""
    pattern = uri.pattern.replace("\\", "\\\\")
    return [
        {
            "rule": f"self.uri.matches('{pattern}')",
            "message": "uri must be s3://bucket/prefix (or s3://bucket/key)",
        },
        {
            "rule": f"!self.uri.matches({_USERINFO}) && "
            f"(!has(self.endpoint) || !self.endpoint.matches({_USERINFO}))",
            "message": "uri and endpoint must not carry credentials (user:password@): "
            "use secretRef",
        },
    ]


_SP = "self.runPolicy.schedulingPolicy"
_HAS_SP = f"has(self.runPolicy) && has({_SP})"
SPEC_RULES: Any = [
    {
        "rule": f"!({_HAS_SP} && has({_SP}.minAvailable)) || "
        f"{_SP}.minAvailable <= (has(self.nodes) ? self.nodes : 1)",
        "message": "runPolicy.schedulingPolicy.minAvailable must not exceed nodes",
    },
    {
        "rule": f"!(has(self.priorityClassName) && {_HAS_SP} && has({_SP}.priorityClass))",
        "message": "set priorityClassName or runPolicy.schedulingPolicy.priorityClass, not both",
    },
    {
        "rule": f"!({_HAS_SP} && has({_SP}.queue)) || "
        f"(has({_SP}.scheduler) && {_SP}.scheduler == 'volcano')",
        "message": "runPolicy.schedulingPolicy.queue is a Volcano queue: "
        "it needs scheduler: volcano",
    },
    {
        "rule": "!(has(self.nodes) && self.nodes > 1 && has(self.storage) && "
        "has(self.storage.accessModes) && !('ReadWriteMany' in self.storage.accessModes))",
        "message": "a gang of several nodes shares the checkpoint volume: storage.accessModes "
        "must include ReadWriteMany (or use storage.existingClaim)",
    },
]
