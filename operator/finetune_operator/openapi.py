"""Turn a pydantic JSON Schema into a Kubernetes structural OpenAPI v3 schema.

What changes (pure functions, no pydantic import needed here):
- `$ref`s are inlined from `$defs`;
- `X | None` becomes X with `nullable: true`;
- other unions (e.g. `list[str] | str`) become an untyped node with
  `x-kubernetes-preserve-unknown-fields: true` (the operator validates them);
  the integer-or-string pattern keeps `x-kubernetes-int-or-string: true`;
- free-form maps (`dict[str, Any]`) become preserve-unknown objects;
- JSON Schema 2020 numeric `exclusiveMinimum: 0` becomes `minimum: 0` +
  `exclusiveMinimum: true` (OpenAPI v3.0);
- `const` becomes a one-value `enum`;
- keywords Kubernetes rejects or that would change stored objects are dropped:
  `title`, `default` (defaults live in the pydantic models, applied by the operator
  and the runtime, so apiserver defaulting never rewrites a user's config),
  `additionalProperties: false`, `examples`, `discriminator`, `$schema`.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

KEPT = {
    "type",
    "format",
    "description",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "pattern",
    "items",
    "properties",
    "additionalProperties",
    "required",
    "nullable",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-validations",
    "maxProperties",
}


def _resolve(node: Schema, defs: dict[str, Schema], seen: tuple[str, ...]) -> Schema:
    ref = node.get("$ref")
    if ref is None:
        return node
    name = ref.rsplit("/", 1)[-1]
    if name in seen:
        raise ValueError(f"recursive schema at {ref}: structural schemas cannot recurse")
    merged = dict(defs[name])
    merged.update({k: v for k, v in node.items() if k != "$ref"})
    return _resolve(merged, defs, seen + (name,))


def _is_null(node: Schema) -> bool:
    return node.get("type") == "null"


def _is_int_or_string(members: list[Schema]) -> bool:
    types = sorted(str(m.get("type")) for m in members)
    return types == ["integer", "string"]


def to_structural(
    schema: Schema, defs: dict[str, Schema] | None = None, *, preserve_objects: bool = False
) -> Schema:
    """Convert one (sub)schema. `preserve_objects` keeps unknown keys in every object."""
    defs = {**(defs or {}), **schema.get("$defs", {})}
    return _convert(schema, defs, (), preserve_objects)


def _convert(node: Schema, defs: dict[str, Schema], seen: tuple[str, ...], keep: bool) -> Schema:
    node = _resolve(node, defs, seen)
    if node.get("x-kubernetes-int-or-string"):
        return _int_or_string(node)
    union = node.get("anyOf") or node.get("oneOf")
    if union:
        return _union(node, union, defs, seen, keep)
    out: Schema = {}
    for key, value in node.items():
        if key == "const":
            out["enum"] = [value]
        elif key not in KEPT:
            continue
        elif key == "properties":
            out["properties"] = {
                name: _convert(sub, defs, seen, keep) for name, sub in value.items()
            }
        elif key == "items":
            out["items"] = _convert(value, defs, seen, keep)
        elif key == "additionalProperties":
            if isinstance(value, dict) and value:
                out["additionalProperties"] = _convert(value, defs, seen, keep)
            elif value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        else:
            out[key] = value
    return _ordered(_open_ends(node, out, keep))


def _int_or_string(node: Schema) -> Schema:
    """A quantity-like field: integer or string, kept as `x-kubernetes-int-or-string`."""
    out: Schema = {"x-kubernetes-int-or-string": True}
    if isinstance(node.get("anyOf"), list):
        out["anyOf"] = [{"type": m["type"]} for m in node["anyOf"]]
    if node.get("description"):
        out["description"] = node["description"]
    if "pattern" in node:
        out["pattern"] = node["pattern"]
    return out


def _union(
    node: Schema, union: list[Schema], defs: dict[str, Schema], seen: tuple[str, ...], keep: bool
) -> Schema:
    """`X | None` -> nullable X; int | str -> int-or-string; numbers -> number; any other
    union -> preserve-unknown (describing its one object form, if it has one)."""
    members = [_resolve(m, defs, seen) for m in union]
    nullable = any(_is_null(m) for m in members)
    rest = [m for m in members if not _is_null(m)]
    if len(rest) == 1:
        out = _convert({**rest[0], **_outer(node)}, defs, seen, keep)
    elif _is_int_or_string(rest):
        out = {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
        }
    elif all(m.get("type") in ("integer", "number") for m in rest):
        out = {"type": "number"}
    else:
        out = {"x-kubernetes-preserve-unknown-fields": True}
        objects = [m for m in rest if m.get("type") == "object" and m.get("properties")]
        if len(objects) == 1:  # e.g. `dict | str`: still describe the object form
            obj = _convert(objects[0], defs, seen, True)
            for key in ("properties", "required"):
                if key in obj:
                    out[key] = obj[key]
    if nullable:
        out["nullable"] = True
    if node.get("description") and "description" not in out:
        out["description"] = node["description"]
    return _ordered(out)


def _open_ends(node: Schema, out: Schema, keep: bool) -> Schema:
    """Where unknown keys survive: free-form maps, untyped (Any) nodes, and (with `keep`)
    every object; an empty `required` is dropped."""
    if node.get("type") == "object" and "properties" in out:
        out.pop("additionalProperties", None)
        if keep:
            out["x-kubernetes-preserve-unknown-fields"] = True
    if (
        node.get("type") == "object"
        and "properties" not in out
        and "additionalProperties" not in out
    ):
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "type" not in out and "x-kubernetes-preserve-unknown-fields" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True  # Any: the operator validates it
    if out.get("required") == []:
        out.pop("required")
    return out


def _outer(node: Schema) -> Schema:
    """Keywords next to an anyOf that still apply to the chosen member."""
    return {k: v for k, v in node.items() if k not in ("anyOf", "oneOf", "default", "title")}


_ORDER = ["description", "type", "format", "nullable"]


def _ordered(node: Schema) -> Schema:
    keys = sorted(node, key=lambda k: (_ORDER.index(k) if k in _ORDER else len(_ORDER), k))
    return {k: node[k] for k in keys}


def structural_problems(node: Schema, path: str = "") -> list[str]:
    """The structural-schema rules this generator must satisfy (checked by tests)."""
    problems: list[str] = []
    typed = (
        "type" in node
        or node.get("x-kubernetes-preserve-unknown-fields")
        or node.get("x-kubernetes-int-or-string")
    )
    if not typed:
        problems.append(f"{path or '<root>'}: no type")
    for key in node:
        if key not in KEPT and key != "anyOf":
            problems.append(f"{path}: keyword {key!r} is not allowed")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties together")
    if node.get("type") == "array" and "items" not in node:
        problems.append(f"{path}: array without items")
    for member in node.get("anyOf") or []:
        if not node.get("x-kubernetes-int-or-string"):
            problems.append(f"{path}: anyOf outside the int-or-string pattern")
        if set(member) - {"type"}:
            problems.append(f"{path}: anyOf member with {sorted(member)}")
    for name, sub in (node.get("properties") or {}).items():
        problems += structural_problems(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        problems += structural_problems(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        problems += structural_problems(node["additionalProperties"], f"{path}{{}}")
    return problems


def pruned_fields(value: Any, schema: Schema, path: str = "") -> list[str]:
    """Fields an apiserver would silently drop from `value` under structural `schema`.

    As the apiserver prunes: known properties recurse into their own schema (also
    under `x-kubernetes-preserve-unknown-fields`), an `additionalProperties` schema
    covers other keys, and unknown keys survive only where unknown fields are kept.
    """
    found: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if props is not None and key in props:
                found += pruned_fields(item, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += pruned_fields(item, extra, f"{path}.{key}")
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                found.append(f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += pruned_fields(item, schema["items"], f"{path}[{i}]")
    return found
