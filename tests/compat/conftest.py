"""Fixtures for the axolotl side-by-side tests: the pinned axolotl venv and a local model.

The tests drive axolotl through its CLI in its own venv (`make axolotl`). Without that
venv they skip with the reason; `make compat-axolotl` sets FINETUNE_REQUIRE_AXOLOTL=1,
which turns a missing venv into a failure and fails the session if anything skipped.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `bench` is a top-level package of the repository

from bench.vs_axolotl import venv  # noqa: E402

REQUIRED = os.environ.get("FINETUNE_REQUIRE_AXOLOTL") == "1"


@pytest.fixture(scope="session")
def axolotl_venv() -> Path:
    reason = venv.missing_reason()
    if reason is not None:
        if REQUIRED:
            pytest.fail(f"FINETUNE_REQUIRE_AXOLOTL=1 but {reason}")
        pytest.skip(f"AXOLOTL COMPAT NOT RUN: {reason}")
    return venv.venv_dir()


@pytest.fixture(scope="session")
def compat_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """$FINETUNE_CACHE and HF caches in a session tmp dir: nothing touches ~/.cache."""
    cache = tmp_path_factory.mktemp("compat-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FINETUNE_CACHE", str(cache / "finetune"))
        patch.setenv("HF_HOME", str(cache / "hf"))
        patch.setenv("HF_DATASETS_CACHE", str(cache / "hf-datasets"))
        yield cache


@pytest.fixture(scope="session")
def model_dir(compat_cache: Path) -> Path:
    """The builtin tiny Llama + tokenizer saved as an ordinary model directory."""
    from finetune_runtime.model.tiny import BUILTINS, build_tiny_llama

    return build_tiny_llama(compat_cache / "tiny-llama", BUILTINS["tiny-llama"], seed=0)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under `make compat-axolotl` a skipped compat test is a failure."""
    if not REQUIRED:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped:
        print(f"\nFINETUNE_REQUIRE_AXOLOTL=1: {skipped} compat test(s) skipped", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
