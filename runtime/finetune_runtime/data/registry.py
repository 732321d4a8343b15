"""Format names -> format objects, through entry points in the `finetune.formats` group.

Every format, built-in or from a plugin package, is an entry point
`NAME = "module:attribute"` in that group; the attribute (a module, a class or an
instance) implements finetune_runtime.data.formats.types.PromptFormat, and a class is
instantiated with no arguments. Listing names reads package metadata only
(importlib.metadata); a format's code is imported when a dataset uses it.

The built-ins are declared in the project's pyproject.toml like any plugin. `BUILTINS`
repeats them (a test keeps the two equal) for one case only: code run from a source
checkout whose installed metadata predates the declarations, which would otherwise know
no format at all.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from finetune_runtime.config.base import FORMATS_GROUP as GROUP
from finetune_runtime.errors import DatasetError

OWN_DISTRIBUTION = "finetune-operator"
BUILTINS = {
    "alpaca": "finetune_runtime.data.formats.builtin:Alpaca",
    "completion": "finetune_runtime.data.formats.builtin:Completion",
    "custom": "finetune_runtime.data.formats.builtin:Custom",
    "sharegpt": "finetune_runtime.data.formats.builtin:ShareGPT",
}


@dataclass(frozen=True)
class FormatEntry:
    """One registered format name: where its code is and which distribution declared it."""

    name: str
    value: str  # "module:attribute"
    distribution: str  # "name version"
    builtin: bool

    @property
    def origin(self) -> str:
        return f"entry point {self.name} = {self.value!r} of {self.distribution}"


@functools.cache
def entries() -> dict[str, list[FormatEntry]]:
    """Every registered name with the entries declaring it (two or more: a conflict)."""
    found: dict[str, list[FormatEntry]] = {}
    own = False
    for ep in metadata.entry_points(group=GROUP):
        dist = ep.dist
        name = dist.metadata["Name"] if dist is not None else "an unknown distribution"
        own = own or name == OWN_DISTRIBUTION
        label = f"{name} {dist.version}" if dist is not None else name
        entry = FormatEntry(ep.name, ep.value, label, name == OWN_DISTRIBUTION)
        if entry not in found.setdefault(ep.name, []):
            found[ep.name].append(entry)
    if not own:  # a source checkout over stale metadata (see the module docstring)
        for fmt, value in BUILTINS.items():
            found.setdefault(fmt, []).append(FormatEntry(fmt, value, OWN_DISTRIBUTION, True))
    return found


def names() -> list[str]:
    return sorted(entries())


def forget() -> None:
    """Drop what was read and loaded (after installing or removing a plugin in-process)."""
    entries.cache_clear()
    load.cache_clear()


def unknown_format_message(name: str) -> str:
    """Why `name` is not a usable format name here, with the closest registered names."""
    known = names()
    close = difflib.get_close_matches(name, known, n=2)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    return (
        f"unknown format {name!r}{hint}; installed here: {', '.join(known)}. A format from a "
        f"plugin package must be installed (pip) where the data is prepared (entry point "
        f"group {GROUP!r}; see docs/datasets.md)"
    )


@functools.cache
def load(name: str) -> Any:
    """The format object registered as `name`; DatasetError naming the entry point and its
    distribution when it cannot be imported or does not implement the interface."""
    declared = entries().get(name)
    if not declared:
        raise DatasetError(unknown_format_message(name))
    if len(declared) > 1:
        both = "; ".join(e.origin for e in declared)
        raise DatasetError(
            f"format {name!r} is registered more than once ({both}): uninstall one of them"
        )
    entry = declared[0]
    try:
        obj = metadata.EntryPoint(entry.name, entry.value, GROUP).load()
        if isinstance(obj, type):
            obj = obj()
    except Exception as exc:  # ImportError, AttributeError, a failing constructor, ...
        raise DatasetError(
            f"format {name!r} cannot be loaded ({entry.origin}): {type(exc).__name__}: {exc}"
        ) from exc
    problem = interface_problem(obj)
    if problem:
        raise DatasetError(
            f"format {name!r} ({entry.origin}) does not implement the format interface: "
            f"{problem} (see docs/datasets.md)"
        )
    return obj


def origin_of(name: str) -> FormatEntry | None:
    """The entry that declares `name` (None when unknown or declared twice)."""
    declared = entries().get(name) or []
    return declared[0] if len(declared) == 1 else None


def interface_problem(obj: Any) -> str | None:
    """What `obj` lacks as a PromptFormat, or None."""
    if not callable(getattr(obj, "segments", None)):
        return "it has no segments(row, ctx) method"
    for hook in ("needs_chat_template", "check_settings"):
        if getattr(obj, hook, None) is not None and not callable(getattr(obj, hook)):
            return f"its {hook} is not callable"
    return None
