"""Safe YAML loading that remembers where every value came from.

PyYAML's safe loader still expands aliases (a "billion laughs" document of a
few hundred bytes can expand to gigabytes) and silently keeps the last of two
duplicate keys. Configs arrive from users and from the Kubernetes API, so this
loader composes the node graph, refuses oversized, alias-bombed, too-deep or
duplicate-keyed documents, and records the line of every key so validation
errors can point at `file:line`.
"""

from __future__ import annotations

import datetime
from typing import Any

import yaml

from finetune_runtime.errors import ConfigError, ConfigIssue

MAX_CONFIG_BYTES = 10 * 1024 * 1024
MAX_NODES = 200_000  # after alias expansion
MAX_DEPTH = 64

Path = tuple[str | int, ...]


class LineIndex:
    """Maps a path of keys/indices to the 1-based line where it is written."""

    def __init__(self) -> None:
        self._lines: dict[Path, int] = {}

    def record(self, path: Path, line: int) -> None:
        self._lines.setdefault(path, line)

    def line_of(self, path: Path) -> int | None:
        """Line of `path`, or of its nearest recorded ancestor."""
        while True:
            if path in self._lines:
                return self._lines[path]
            if not path:
                return None
            path = path[:-1]


def check_size(text: str | bytes, source: str) -> None:
    size = len(text.encode("utf-8") if isinstance(text, str) else text)
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config is {size} bytes; the limit is {MAX_CONFIG_BYTES} bytes (10 MB). "
            "Keep datasets out of the config and reference them by path.",
            source,
        )


class _DepthLimitedLoader(yaml.SafeLoader):
    """PyYAML composes nodes recursively: refuse deep nesting before Python's stack runs out."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH + 1:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None, None, f"config nests deeper than {MAX_DEPTH} levels", mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(text: str, source: str) -> tuple[Any, LineIndex]:
    """Parse one YAML document into plain Python data plus a LineIndex."""
    check_size(text, source)
    try:
        node = yaml.compose(text, Loader=_DepthLimitedLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or str(exc)
        raise ConfigError([ConfigIssue(None, f"invalid YAML: {problem}", line)], source) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", source) from exc
    index = LineIndex()
    if node is None:
        return None, index
    builder = _Builder(source, index)
    return builder.build(node, (), 0), index


class _Builder:
    def __init__(self, source: str, index: LineIndex) -> None:
        self.source = source
        self.index = index
        self.count = 0
        self.constructor = yaml.SafeLoader("")  # only used to resolve scalar tags

    def _fail(self, node: yaml.Node, message: str) -> ConfigError:
        return ConfigError([ConfigIssue(None, message, node.start_mark.line + 1)], self.source)

    def build(self, node: yaml.Node, path: Path, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise self._fail(
                node,
                f"config expands to more than {MAX_NODES} values (YAML alias bomb?); "
                "aliases/anchors that multiply content are refused",
            )
        if depth > MAX_DEPTH:
            raise self._fail(node, f"config nests deeper than {MAX_DEPTH} levels")
        self.index.record(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise self._fail(key_node, "YAML merge keys (<<) are not supported in configs")
                key = self._scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else None
                if not isinstance(key, str | int | float | bool):
                    raise self._fail(key_node, "mapping keys must be plain scalars")
                key = str(key)
                if key in result:
                    raise self._fail(
                        key_node, f"duplicate key {key!r}: each key may appear once per mapping"
                    )
                self.index.record(path + (key,), key_node.start_mark.line + 1)
                result[key] = self.build(value_node, path + (key,), depth + 1)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        return self._scalar(node)

    def _scalar(self, node: yaml.Node) -> Any:
        """A scalar as JSON would carry it: timestamps stay text, binary is refused."""
        if node.tag == "tag:yaml.org,2002:timestamp":
            return str(node.value)  # `2024-01-01` is a name or a path here, not a date
        if node.tag == "tag:yaml.org,2002:binary":
            raise self._fail(node, "binary (!!binary) values are not supported in configs")
        try:
            value = self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            raise self._fail(node, f"invalid value: {problem}") from exc
        except (ValueError, TypeError, IndexError, AttributeError) as exc:
            # e.g. `!!int ''`, `!!float abc`, or an integer with more than 4300 digits
            kind = str(node.tag).rsplit(":", 1)[-1]
            shown = node.value if len(node.value) <= 40 else node.value[:37] + "..."
            raise self._fail(node, f"invalid value: {shown!r} is not a valid {kind}") from exc
        if isinstance(value, datetime.date):
            return str(node.value)
        return value
