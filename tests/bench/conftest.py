"""Fixtures for the bench smoke tests: tiny sizes, a session model cache, the repo on sys.path."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `bench` is a top-level package of the repository


@pytest.fixture(scope="session", autouse=True)
def bench_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """$FINETUNE_CACHE in a session tmp dir (workers inherit it): nothing touches ~/.cache."""
    cache = tmp_path_factory.mktemp("finetune-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FINETUNE_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six synthetic Alpaca rows."""
    from bench.data import synthetic_rows, write_jsonl

    return write_jsonl(tmp_path_factory.mktemp("data") / "rows.jsonl", synthetic_rows(6, seed=3))
