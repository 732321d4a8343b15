"""The shell commands the docs show, found in their fenced code blocks.

A command is a line (with its `\\` continuations) in a fenced block that starts with
`finetune`, `finetune-operator`, `kubectl` or `helm` (optionally after a `$ ` prompt). A
*synopsis* is a usage line such as `finetune validate CONFIG [--json]`: it is not run, but
every flag it names must exist in the real command's `--help`.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROGRAMS = ("finetune", "finetune-operator", "kubectl", "helm")
_FENCE = re.compile(r"^\s*```")
_START = re.compile(r"^(?:\$ )?(finetune-operator|finetune|kubectl|helm)(?:\s|$)")
_SEPARATORS = {"|", "&&", "&", ";"}


def doc_files() -> list[Path]:
    """docs/*.md, the top README and the chart's README."""
    return [
        *sorted((REPO / "docs").glob("*.md")),
        REPO / "README.md",
        REPO / "charts" / "finetune-operator" / "README.md",
    ]


@dataclass(frozen=True)
class DocCommand:
    file: str  # relative to the repository root
    line: int
    text: str  # continuations joined, the trailing comment kept

    @property
    def synopsis(self) -> bool:
        return bool(re.search(r"\[-|\[[A-Z]", self.text))

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def pipeline(self) -> list[list[str]]:
        """The command split into its simple commands (at `|`, `&&`, `;`, a trailing `&`)."""
        tokens = shlex.split(self.text, comments=True)
        parts: list[list[str]] = [[]]
        for token in tokens:
            if token in _SEPARATORS:
                parts.append([])
            else:
                parts[-1].append(token)
        return [part for part in parts if part]

    def flags(self) -> set[str]:
        return set(re.findall(r"(?<![\w-])(--?[a-zA-Z][-a-zA-Z0-9]*)", self.text))


def commands_in(path: Path, root: Path = REPO) -> list[DocCommand]:
    rel = str(path.relative_to(root))
    found: list[DocCommand] = []
    in_block = False
    current: list[str] = []
    start = 0

    def flush() -> None:
        if current:
            found.append(DocCommand(rel, start, " ".join(current)))
            current.clear()

    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if _FENCE.match(raw):
            flush()
            in_block = not in_block
            continue
        if not in_block:
            continue
        line = raw.strip()
        if current and current[-1].endswith("\\"):
            current[-1] = current[-1][:-1].rstrip()
            current.append(line)
        elif current and raw[:1].isspace() and line and DocCommand("", 0, current[0]).synopsis:
            current.append(line)  # a wrapped usage line
        else:
            flush()
            if _START.match(line):
                current.append(line.removeprefix("$ "))
                start = number
    flush()
    return found


def all_commands() -> list[DocCommand]:
    return [command for path in doc_files() for command in commands_in(path)]
