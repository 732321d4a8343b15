"""pydantic's validation errors as our `ConfigIssue`s: at the key the user wrote, in words.

pydantic reports `('deepspeed', 'str')`-style locations with union tags and messages such
as "Extra inputs are not permitted"; users get `deepspeed: ...` and "unknown key; did you
mean 'learning_rate'?" instead.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from pydantic import BaseModel, ValidationError

from finetune_runtime.config.base import Loc, model_in
from finetune_runtime.config.finetune import FineTuneConfig
from finetune_runtime.errors import ConfigIssue

Origin = Callable[[Loc], Loc]  # canonical location -> the path the user wrote


def issues_from_validation(exc: ValidationError, origin: Origin) -> list[ConfigIssue]:
    """One issue per pydantic error, at the user's key, with a message for people."""
    issues = []
    for err in exc.errors(include_url=False):
        loc = field_loc(err["loc"])
        path = origin(loc)
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if err["type"] == "extra_forbidden":
            message = unknown_key_message(loc)
        elif err["type"] == "missing":
            message = "is required"
        elif err["type"] == "literal_error":
            message = f"{message} (got {err.get('input')!r})"
        issues.append(ConfigIssue.at(path, message))
    return issues


def field_loc(loc: tuple[str | int, ...]) -> Loc:
    """Drop the union-member tags pydantic adds to a loc, e.g. ('deepspeed', 'str')."""
    kept: list[str | int] = []
    model: type[BaseModel] | None = FineTuneConfig
    for part in loc:
        if isinstance(part, str):
            # Below a model every part is a key the user wrote (even `str` or `a[b`); tags
            # only follow a field whose value is not a model (a union such as deepspeed's).
            if model is None and _looks_like_type_tag(part):
                continue
            field = model.model_fields.get(part) if model is not None else None
            model = model_in(field.annotation) if field is not None else None
        kept.append(part)
    return tuple(kept)


def _looks_like_type_tag(part: str) -> bool:
    return "[" in part or "(" in part or part in {"str", "int", "float", "bool"}


def unknown_key_message(loc: Loc) -> str:
    """'unknown key; did you mean ...?' (or the section's known keys) for a key at `loc`."""
    model: type[BaseModel] = FineTuneConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None) if field else None
        model = model_in(annotation) or model
    known = sorted(model.model_fields)
    guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
    hint = f"; did you mean {guess[0]!r}?" if guess else f"; known keys: {', '.join(known)}"
    return f"unknown key{hint}"
