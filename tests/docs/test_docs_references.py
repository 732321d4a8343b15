"""Every repository path and test the docs cite exists (docs say which test proves a claim)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from doc_commands import REPO, doc_files

TOP = "tests|bench|scripts|runtime|operator|charts|images|examples|argocd|crds|kube"
PATH = re.compile(rf"(?<![\w./-])((?:{TOP})/[\w./-]*\w\.\w+)")
TEST_NAME = re.compile(r"`(test_\w+?)(?:\.py)?`|\b(test_\w+)\.py\b")


def _test_names() -> tuple[set[str], set[str]]:
    files, functions = set(), set()
    for path in (REPO / "tests").rglob("*.py"):
        files.add(path.stem)
        functions.update(re.findall(r"def (test_\w+)", path.read_text(encoding="utf-8")))
    return files, functions


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_cited_paths_and_tests_exist(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    # bench/**.json are results a bench run writes (make bench), not committed files.
    cited = [
        p for p in set(PATH.findall(text)) if not (p.startswith("bench/") and p.endswith(".json"))
    ]
    missing = [p for p in sorted(cited) if not (REPO / p).exists()]
    assert not missing, f"{doc.name} cites paths that do not exist: {missing}"
    files, functions = _test_names()
    cited = {a or b for a, b in TEST_NAME.findall(text)}
    unknown = sorted(name for name in cited if name not in files and name not in functions)
    assert not unknown, f"{doc.name} cites tests that do not exist: {unknown}"


def test_the_reference_patterns_find_what_docs_write() -> None:
    text = (
        "see tests/chart/test_chart_refusals.py, `test_chart_render.py`, `test_ghost`, "
        "(../charts/x/README.md)"
    )
    assert PATH.findall(text) == ["tests/chart/test_chart_refusals.py"]
    assert {a or b for a, b in TEST_NAME.findall(text)} == {
        "test_chart_refusals",
        "test_chart_render",
        "test_ghost",
    }
