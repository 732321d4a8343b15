"""SpecError: every offending spec field named, with what to do; built from pydantic's errors."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from finetune_operator.redact import redact


@dataclass(frozen=True)
class SpecIssue:
    field: str
    message: str

    def render(self) -> str:
        return f"{self.field}: {self.message}"


class SpecError(Exception):
    """The FineTuneJob cannot run as written. `issues` names every offending field."""

    def __init__(self, issues: list[SpecIssue], text: str | None = None) -> None:
        self.issues = issues
        if text is not None:
            pass  # already located (the runtime's ConfigError names file:line and field)
        elif len(issues) == 1:
            text = issues[0].render()
        else:
            text = f"{len(issues)} problems in the FineTuneJob:\n" + "\n".join(
                f"  - {issue.render()}" for issue in issues
            )
        super().__init__(text + "\nFix the FineTuneJob and apply it again.")


def issue_field(loc: tuple[str | int, ...]) -> str:
    out = "spec"
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "literal[", "list[", "dict[", "str", "int", "bool")):
            continue  # pydantic's union-member tags say nothing to a user
        else:
            out += f".{part}"
    return out


def spec_issues(exc: ValidationError) -> list[SpecIssue]:
    issues = []
    for err in exc.errors(include_url=False):
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; fields are camelCase)"
        elif err["type"] == "missing":
            message = "is required"
        elif "env" in err["loc"]:
            pass  # never echo environment values: they may be credentials
        elif "input" in err and err["type"] not in ("value_error", "assertion_error"):
            shown = redact(repr(err["input"]))  # a URL may carry user:password@
            message += f" (got {shown[:60]})"
        issues.append(SpecIssue(issue_field(err["loc"]), message))
    return issues
