"""One error hierarchy for the runtime.

Every error carries enough context to act on: the config field, the file and
line, and what to do. The CLI prints `str(error)` and exits non-zero; the
operator copies the same text into a Failed/InvalidSpec condition.
"""

from __future__ import annotations

# Exit codes of every `finetune` command (docs/reliability.md#exit-codes). Plain constants in
# a dependency-free module, so the operator can import them to classify a worker's exit.
EXIT_ERROR = 1  # an unexpected FinetuneError
EXIT_CONFIG = 2  # the config (or a flag) is invalid
EXIT_DATASET = 3  # a dataset file or row cannot be used
EXIT_MODEL = 4  # the base model, tokenizer or adapter cannot be loaded
EXIT_CHECKPOINT = 5  # a checkpoint or output_dir cannot be read or written
EXIT_FETCH = 6  # object storage transfer failed
EXIT_LAUNCH = 7  # the distributed launch environment is inconsistent
EXIT_DIVERGED = 8  # loss or gradients became NaN/Inf: retrying repeats it (permanent)
EXIT_INTEGRITY = 9  # weights do not match their SHA-256 manifest, or the wrong base model
EXIT_LOCKED = 10  # another live run holds output_dir's lock (transient: it may end)
EXIT_INTERRUPTED = 130  # Ctrl-C outside training
EXIT_PREEMPTED = 143  # stopped by SIGTERM after checkpointing; rerun resumes

# Failures that a retry of the same spec repeats: an operator should not restart the gang.
PERMANENT_EXIT_CODES = frozenset({EXIT_CONFIG, EXIT_DATASET, EXIT_DIVERGED, EXIT_INTEGRITY})


class FinetuneError(Exception):
    """Base class for every error the runtime raises on purpose."""

    exit_code = EXIT_ERROR


class ConfigError(FinetuneError):
    """The training config is invalid. `issues` lists every problem found."""

    exit_code = EXIT_CONFIG

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

    exit_code = EXIT_DATASET

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

    exit_code = EXIT_MODEL


class CheckpointError(FinetuneError):
    """A checkpoint is missing, incomplete or does not match the config."""

    exit_code = EXIT_CHECKPOINT


class FetchError(FinetuneError):
    """Downloading (or uploading) data and models from object storage failed."""

    exit_code = EXIT_FETCH


class LaunchError(FinetuneError):
    """The distributed launch environment is inconsistent or rendezvous failed."""

    exit_code = EXIT_LAUNCH


class DivergedError(FinetuneError):
    """Loss or gradient norm became NaN/Inf. Names the step and value; nothing is saved."""

    exit_code = EXIT_DIVERGED


class IntegrityError(FinetuneError):
    """Weights differ from their manifest (corrupted, truncated, edited), or an adapter
    does not belong to the base model it is being merged into."""

    exit_code = EXIT_INTEGRITY


class LockedError(FinetuneError):
    """Another live run holds output_dir. Names the holder (host, pid, start time)."""

    exit_code = EXIT_LOCKED


# Exit codes that mean "running the same job again cannot help" (PERMANENT_EXIT_CODES), with
# what each means: the operator fails the job instead of restarting the gang (its
# restartPolicy OnFailure and ExitCode both honour this table).
USER_ERROR_EXIT_CODES: dict[int, str] = {
    EXIT_CONFIG: "a config error",
    EXIT_DATASET: "a dataset error",
    EXIT_DIVERGED: "a diverged run (non-finite loss or gradients)",
    EXIT_INTEGRITY: "corrupted weights or the wrong base model",
}
assert set(USER_ERROR_EXIT_CODES) == PERMANENT_EXIT_CODES
