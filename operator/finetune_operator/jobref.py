"""JobRef: the identity of a FineTuneJob, what its children need to point back at it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class JobRef:
    name: str
    namespace: str
    uid: str

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> JobRef:
        meta = body.get("metadata") or {}
        return cls(meta.get("name", ""), meta.get("namespace", ""), meta.get("uid", ""))
