"""Hypothesis strategies and settings shared by the fuzz tests.

Values are generated from the schema itself (pydantic field annotations), so a new
config or spec field is fuzzed without touching this file.

Profiles (env FINETUNE_FUZZ):
- `ci` (default): derandomized (the same examples every run: no flaky CI), few
  examples, so the whole fuzz suite stays well under a minute on two shared cores;
- `deep`: random and 50x the examples, for hunting bugs locally
  (`FINETUNE_FUZZ=deep pytest tests/fuzz`).
"""

from __future__ import annotations

import os
import types
import typing
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from pydantic import BaseModel

PROFILE = os.environ.get("FINETUNE_FUZZ", "ci")
_SCALE = 50 if PROFILE == "deep" else 1


def fuzz_settings(examples: int, deadline_ms: int | None = 2000) -> settings:
    """Settings for one fuzz test. The deadline bounds every single example (parsing a
    config takes about a millisecond; seconds would mean an alias bomb got through)."""
    return settings(
        max_examples=examples * _SCALE,
        derandomize=PROFILE != "deep",
        database=None,
        deadline=None if deadline_ms is None else timedelta(milliseconds=deadline_ms),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )


# ----------------------------------------------------------------------------- values

SPECIAL_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\t",
        "..",
        "../../etc/passwd",
        "a/../../b",
        "a\\..\\b",
        "/abs/path",
        "x\x00y",
        "s3://bucket/key.jsonl",
        "s3://",
        "builtin:tiny-llama",
        "zero3",
        "ds.json",
        "all-linear",
        "{instruction}",
        "{",
        "}{",
        "{0}",
        "{instruction:d}",
        "null",
        "~",
        "true",
        "1e5",
        "0x10",
        "2024-01-01",
        "é🙂\u202e",
        "\ufeff",
        "a" * 300,
        # key shapes that look like field paths or pydantic's union tags
        "k[0]",
        "k[²]",
        "k.b",
        "[key]",
        "str",
        "list[str]",
        "function-after[x]",
    ]
)
TEXT = st.one_of(SPECIAL_TEXT, st.text(max_size=24))
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, 0.5, 1e-12, 1 - 1e-12, 1e308, -1.0]),
)
INTS = st.one_of(
    st.integers(-3, 10),
    st.integers(),
    st.sampled_from([2**31, 2**63, -(2**63), 10**30]),
)
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT)


def json_values(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """Any JSON-shaped value: what a YAML file or the Kubernetes API can hold."""
    return st.recursive(
        SCALARS,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(TEXT, inner, max_size=4),
        ),
        max_leaves=max_leaves,
    )


ANY = json_values()


def typed_values(annotation: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values of the annotated type, boundary values included (valid or not)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return typed_values(args[0], depth)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([typed_values(a, depth) for a in args])
    if annotation is type(None):
        return st.none()
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return INTS
    if annotation is float:
        return st.one_of(FLOATS, INTS)
    if annotation is str:
        return TEXT
    if annotation is Any:
        return ANY
    if origin is list:
        item = typed_values(args[0], depth + 1) if args else ANY
        return st.lists(item, max_size=3)
    if origin is dict:
        value = typed_values(args[1], depth + 1) if len(args) > 1 else ANY
        return st.dictionaries(TEXT, value, max_size=3)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if depth > 2:
            return st.fixed_dictionaries({})
        fields = {
            name: typed_values(f.annotation, depth + 1)
            for name, f in annotation.model_fields.items()
        }
        return st.fixed_dictionaries({}, optional=fields)
    return ANY


def field_value(annotation: Any) -> st.SearchStrategy[Any]:
    """Mostly the field's own type (boundaries), sometimes anything at all."""
    return st.one_of(typed_values(annotation), typed_values(annotation), ANY)


def leaf_fields(
    model: type[BaseModel], prefix: tuple[str | int, ...] = (), alias: bool = False
) -> list[tuple[tuple[str | int, ...], Any]]:
    """(path, annotation) of every field, descending into nested models (lists: item 0)."""
    out: list[tuple[tuple[str | int, ...], Any]] = []
    for name, info in model.model_fields.items():
        key = (info.alias or name) if alias else name
        path = prefix + (key,)
        out.append((path, info.annotation))
        nested, in_list = _nested_model(info.annotation)
        if nested is not None:
            out.extend(leaf_fields(nested, path + ((0,) if in_list else ()), alias))
    return out


def _nested_model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and args:
        model, _ = _nested_model(args[0])
        return model, True
    for arg in args:
        model, in_list = _nested_model(arg)
        if model is not None:
            return model, in_list
    return None, False


def set_path(data: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    """Set `value` at `path`, creating mappings (and list item 0) on the way."""
    node: Any = data
    for part, nxt in zip(path[:-1], path[1:], strict=True):
        if isinstance(part, int):
            while len(node) <= part:
                node.append({})
            if not isinstance(node[part], dict):
                node[part] = {}
            node = node[part]
            continue
        default: Any = [] if isinstance(nxt, int) else {}
        child = node.get(part)
        if not isinstance(child, type(default)):
            node[part] = child = default
        node = child
    last = path[-1]
    if isinstance(last, int):
        while len(node) <= last:
            node.append({})
    node[last] = value
