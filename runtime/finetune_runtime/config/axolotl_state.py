"""The result of normalising an axolotl-style config, built up key by key.

`Normalized` holds the canonical data and, for each canonical location, the path the user
wrote (so errors name `lora_r`, not `lora.r`), plus warnings and issues found on the way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from finetune_runtime.config.axolotl_keys import Loc
from finetune_runtime.errors import ConfigIssue, format_path


@dataclass
class Normalized:
    data: dict[str, Any]
    origins: dict[Loc, Loc] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    issues: list[ConfigIssue] = field(default_factory=list)

    def origin(self, loc: Loc) -> Loc:
        """The user-written path for a canonical location (longest known prefix)."""
        for cut in range(len(loc), -1, -1):
            prefix = loc[:cut]
            if prefix in self.origins:
                return self.origins[prefix] + loc[cut:]
        return loc

    def refuse(self, written_as: Loc, message: str) -> None:
        """Record an issue at the path the user wrote."""
        self.issues.append(ConfigIssue.at(written_as, message))


def put(out: Normalized, loc: Loc, value: Any, written_as: Loc, check: bool = True) -> None:
    """Put `value` at canonical `loc`; a different value already there from another key
    the user wrote (`learning_rate` and `training.learning_rate`) is an error."""
    node: dict[str, Any] = out.data
    for part in loc[:-1]:
        child = node.setdefault(str(part), {})
        if not isinstance(child, dict):
            return
        node = child
    key = str(loc[-1])
    before = out.origins.get(loc)
    if check and key in node and before not in (None, written_as) and node[key] != value:
        out.refuse(
            written_as,
            f"conflicts with {format_path(before)} ({node[key]!r} there, {value!r} here): "
            "give the setting once",
        )
        return
    node[key] = value
    out.origins[loc] = written_as
