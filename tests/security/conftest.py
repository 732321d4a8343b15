"""Fixtures for the secret-leak tests: unique marker credentials, moto S3 over HTTP, and
the shared helpers of tests/ (s3_server, kubeharness) on sys.path."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from leak_helpers import Markers  # noqa: E402
from s3_server import TEST_REGION, FaultProxy, MotoS3  # noqa: E402


@pytest.fixture(scope="session")
def markers() -> Markers:
    tag = uuid.uuid4().hex
    return Markers(
        key_id=f"MARKERKEYID{tag[:12].upper()}",
        secret=f"marker-secret/{tag}+=",
        token=f"marker-hf-token-{tag[::-1]}",
        inline=f"marker-inline-{tag[:16]}",
    )


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoS3]:
    server = MotoS3().start()
    yield server
    server.stop()


@pytest.fixture
def fault_proxy(moto: MotoS3) -> Iterator[FaultProxy]:
    proxy = FaultProxy(moto.endpoint_url).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="session")
def finetune_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("finetune-cache")


@pytest.fixture
def marker_env(markers: Markers, finetune_cache: Path, tmp_path: Path) -> dict[str, str]:
    """The environment of a worker pod: credentials (the markers) as the operator injects
    them from the job's Secret, nothing from the developer's own AWS setup."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "FINETUNE_", "HF_"))
    }
    env |= {
        "AWS_ACCESS_KEY_ID": markers.key_id,
        "AWS_SECRET_ACCESS_KEY": markers.secret,
        "AWS_DEFAULT_REGION": TEST_REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "HF_TOKEN": markers.token,
        "FINETUNE_CACHE": str(finetune_cache),
        "NO_PROXY": "*",
        "no_proxy": "*",
    }
    return env
