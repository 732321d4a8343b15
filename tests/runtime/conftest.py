"""Shared fixtures for runtime tests. Append new fixtures; keep existing ones intact."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Nothing is downloaded in tests: the hub is never reachable here, and huggingface_hub /
# datasets read these at import, before any test runs (a lookup would retry for ~30 s).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Shared test helpers (tests/s3_server.py, ...) live one level up.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from s3_server import (  # noqa: E402
    TEST_ACCESS_KEY_ID,
    TEST_REGION,
    TEST_SECRET_ACCESS_KEY,
    FaultProxy,
    MotoS3,
)

# -- S3 (moto over HTTP) -------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoS3]:
    """One moto S3 server for the session, on 127.0.0.1 with a random port."""
    server = MotoS3().start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A clean AWS environment: fake credentials, fixed region, no profile or endpoint."""
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_MAX_ATTEMPTS",
        "AWS_RETRY_MODE",
        "FINETUNE_S3_ADDRESSING_STYLE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET_ACCESS_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", TEST_REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def s3_client(s3_server: MotoS3, s3_env: None) -> Any:
    """A plain boto3 client straight to moto (no proxy), for arranging test data."""
    return s3_server.client()


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    """A fresh, empty bucket per test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_proxy(s3_server: MotoS3) -> Iterator[FaultProxy]:
    """A recording, fault-injecting proxy in front of moto; point code under test at it."""
    proxy = FaultProxy(s3_server.endpoint_url).start()
    yield proxy
    proxy.stop()


# -- Tiny builtin model (built locally, nothing downloaded) ----------------------------


@pytest.fixture(scope="session", autouse=True)
def finetune_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point $FINETUNE_CACHE at a session tmp dir so builtin models never touch ~/.cache."""
    cache = tmp_path_factory.mktemp("finetune-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FINETUNE_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def tiny_model_dir(finetune_cache: Path) -> Path:
    """The builtin tiny Llama (random weights + BPE tokenizer), built once per session."""
    from finetune_runtime.model.tiny import resolve_builtin

    return resolve_builtin("builtin:tiny-llama")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path) -> Any:
    """The tiny model's tokenizer (ChatML template, <s>/</s>/<pad>)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


# -- Multi-process training (torchrun, DeepSpeed) ---------------------------------------


@pytest.fixture(scope="session")
def ddp_reference(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Any:
    """A two-node DDP run through `finetune launch` that every distributed backend is
    compared with, step by step (built once per session; see distributed_harness.py)."""
    from distributed_harness import two_node_launch

    run = two_node_launch(tmp_path_factory.mktemp("ddp-reference"))
    run.node0.check()
    run.node1.check()
    return run


# -- Serving (`finetune serve`) -------------------------------------------------------


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Any:
    """A tiny LoRA trained 3 steps and merged: output_dir/{adapter,merged}."""
    from serve_fixtures import train_outputs

    return train_outputs(tmp_path_factory.mktemp("serve-a"), seed=7, merged=True)


@pytest.fixture(scope="session")
def second_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Any:
    """Another adapter on the same base (another seed), not merged."""
    from serve_fixtures import train_outputs

    return train_outputs(tmp_path_factory.mktemp("serve-b"), seed=11, merged=False)


# -- Hugging Face datasets cache -------------------------------------------------------


@pytest.fixture
def hf_datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private `datasets` cache (Arrow copies of parquet/csv files, hub-style entries)."""
    import datasets

    cache = tmp_path / "hf-datasets"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache
