"""One error hierarchy for the runtime.

Every error carries enough context to act on: the config field, the file and
line, and what to do. The CLI prints `str(error)` and exits non-zero; the
operator copies the same text into a Failed/InvalidSpec condition.
"""

from __future__ import annotations


class FinetuneError(Exception):
    """Base class for every error the runtime raises on purpose."""

    exit_code = 1


class ConfigError(FinetuneError):
    """The training config is invalid. `issues` lists every problem found."""

    exit_code = 2

    def __init__(self, issues: list[ConfigIssue] | str, source: str | None = None) -> None:
        if isinstance(issues, str):
            issues = [ConfigIssue(field=None, message=issues)]
        self.issues = issues
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        lines = [issue.render(self.source) for issue in self.issues]
        if len(lines) == 1:
            return lines[0]
        return f"{len(lines)} problems in the config:\n" + "\n".join(f"  - {x}" for x in lines)


class ConfigIssue:
    """One problem: where it is (field path, line) and what is wrong."""

    def __init__(
        self,
        field: str | None,
        message: str,
        line: int | None = None,
        column: int | None = None,
        path: tuple[str | int, ...] | None = None,
    ) -> None:
        self.field = field
        self.message = message
        self.line = line
        self.column = column
        self.path = path  # the field as keys/indices, for finding its line

    @classmethod
    def at(cls, path: tuple[str | int, ...], message: str) -> ConfigIssue:
        """An issue at a config location, e.g. ('datasets', 0, 'path') -> datasets[0].path."""
        return cls(format_path(path), message, path=path)

    def location(self, source: str | None) -> str:
        where = source or "<config>"
        if self.line is not None:
            where += f":{self.line}"
        return where

    def render(self, source: str | None) -> str:
        field = f" {self.field}:" if self.field else ""
        return f"{self.location(source)}:{field} {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {"field": self.field, "message": self.message, "line": self.line}


def format_path(path: tuple[str | int, ...]) -> str:
    """('datasets', 0, 'path') -> 'datasets[0].path'."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class DatasetError(FinetuneError):
    """A dataset file or row cannot be used. Names the file and line."""

    exit_code = 3

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        self.message = message
        self.path = path
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)


class ModelError(FinetuneError):
    """The base model, tokenizer or adapter cannot be loaded or built."""

    exit_code = 4


class CheckpointError(FinetuneError):
    """A checkpoint is missing, incomplete or does not match the config."""

    exit_code = 5


class FetchError(FinetuneError):
    """Downloading (or uploading) data and models from object storage failed."""

    exit_code = 6


class LaunchError(FinetuneError):
    """The distributed launch environment is inconsistent or rendezvous failed."""

    exit_code = 7
