"""S3 credentials never leak from the runtime: not in output, logs or exception messages.

The credentials are unique markers (see conftest.Markers) in the environment, as the
operator injects them into a pod. Real parts: the `finetune` CLI as a subprocess at
DEBUG log level (botocore's request logging included), moto's S3 server over HTTP,
moto's credential checking (AccessDenied), a fault-injecting proxy (500s), a closed
port (unreachable endpoint), and real training on the tiny model reading its dataset
from S3 and uploading its adapter there.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import traceback
import uuid
from pathlib import Path
from typing import Any

import pytest
from leak_helpers import Markers, assert_clean
from s3_server import FaultProxy, MotoS3

from finetune_runtime.data import packaged_data_path
from finetune_runtime.errors import FetchError
from finetune_runtime.storage.fetch import fetch
from finetune_runtime.storage.s3 import S3Options
from finetune_runtime.storage.upload import upload

pytestmark = pytest.mark.slow  # subprocesses (CLI, training)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def finetune(
    env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """The real CLI at DEBUG log level (what `--log-level DEBUG` shows in a pod log)."""
    return subprocess.run(
        [sys.executable, "-m", "finetune_runtime.cli", "--log-level", "DEBUG", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def bucket(moto: MotoS3) -> str:
    name = f"sec-{uuid.uuid4().hex[:10]}"
    client = moto.client(aws_access_key_id="arrange", aws_secret_access_key="arrange")
    client.create_bucket(Bucket=name)
    body = packaged_data_path().read_bytes()
    client.put_object(Bucket=name, Key="data/train.jsonl", Body=body)
    client.put_object(Bucket=name, Key="data/extra.jsonl", Body=body[:2000].rsplit(b"\n", 1)[0])
    return name


def test_fetch_cli_success_and_every_failure_path(
    moto: MotoS3,
    fault_proxy: FaultProxy,
    bucket: str,
    marker_env: dict[str, str],
    markers: Markers,
    tmp_path: Path,
) -> None:
    endpoint = moto.endpoint_url
    fault_proxy.fail(10_000, 500, "InternalError", match=lambda r: r.key == "data/train.jsonl")
    cases: list[tuple[str, list[str], int, str]] = [
        ("prefix", [f"s3://{bucket}/data/", "ok/", "--endpoint-url", endpoint], 0, "fetched"),
        ("object", [f"s3://{bucket}/data/train.jsonl", "one/", "--endpoint-url", endpoint], 0, ""),
        ("no key", [f"s3://{bucket}/nope.jsonl", "x", "--endpoint-url", endpoint], 6, "404"),
        (
            "no bucket",
            ["s3://no-such-bkt-sec/a", "x", "--endpoint-url", endpoint],
            6,
            "NoSuchBucket",
        ),
        (
            "unreachable",
            ["s3://bkt-sec/a", "x", "--endpoint-url", f"http://127.0.0.1:{closed_port()}"]
            + ["--max-attempts", "1"],
            6,
            "cannot reach",
        ),
        (
            "500s",
            [f"s3://{bucket}/data/train.jsonl", "y", "--endpoint-url", fault_proxy.endpoint_url]
            + ["--max-attempts", "2"],
            6,
            "HTTP 500",
        ),
        ("bad endpoint", ["s3://bkt-sec/a", "x", "--endpoint-url", "http://[::1"], 6, "S3 client"),
        (
            "upload to nowhere",
            ["s3://no-such-bkt-sec/out/", str(packaged_data_path()), "--upload"]
            + ["--endpoint-url", endpoint],
            6,
            "NoSuchBucket",
        ),
    ]
    for name, args, code, expected in cases:
        args = [str(tmp_path / a) if a in ("ok/", "one/", "x", "y") else a for a in args]
        done = finetune(marker_env, "fetch", *args, "--no-progress")
        output = done.stdout + done.stderr
        assert done.returncode == code, (name, output[-2000:])
        assert expected in output, (name, output[-2000:])
        assert "Sending http request" in output or code == 6, "botocore's DEBUG log is on"
        assert_clean(output, markers, f"`finetune fetch` output ({name})")

    with moto.enforce_auth():  # moto checks the (unknown) marker key for real
        done = finetune(
            marker_env, "fetch", f"s3://{bucket}/data/", str(tmp_path / "denied"),
            "--endpoint-url", endpoint, "--max-attempts", "1", "--no-progress",
        )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 6 and "HTTP 403" in output and "check the credentials" in output
    assert_clean(output, markers, "`finetune fetch` output (AccessDenied)")


def test_in_process_errors_and_our_logs_never_hold_credentials(
    moto: MotoS3,
    fault_proxy: FaultProxy,
    bucket: str,
    marker_env: dict[str, str],
    markers: Markers,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Library use: exception messages, their tracebacks (causes and contexts) and the
    runtime's own log records."""
    for key, value in marker_env.items():
        monkeypatch.setenv(key, value)
    caplog.set_level(logging.DEBUG, logger="finetune_runtime")
    fault_proxy.fail(10_000, 503, "SlowDown", match=lambda r: "flaky" in r.key)
    attempts: list[tuple[str, Any]] = [
        ("missing", lambda: fetch(f"s3://{bucket}/missing", tmp_path / "a", options=opts(moto))),
        (
            "503s",
            lambda: fetch(
                f"s3://{bucket}/flaky.jsonl",
                tmp_path / "b",
                options=S3Options(endpoint_url=fault_proxy.endpoint_url, max_attempts=1),
            ),
        ),
        (
            "unreachable",
            lambda: fetch(
                "s3://bkt-sec/a",
                tmp_path / "c",
                options=S3Options(endpoint_url=f"http://127.0.0.1:{closed_port()}", max_attempts=1),
            ),
        ),
        (
            "upload",
            lambda: upload(packaged_data_path(), "s3://no-such-bkt-sec/x/", options=opts(moto)),
        ),
    ]
    texts = []
    for name, attempt in attempts:
        with pytest.raises(FetchError) as info:
            attempt()
        texts += [name, str(info.value), repr(info.value)]
        texts.append("".join(traceback.format_exception(info.value)))
    with moto.enforce_auth(), pytest.raises(FetchError) as denied:
        fetch(f"s3://{bucket}/data/", tmp_path / "d", options=opts(moto, max_attempts=1))
    texts += [str(denied.value), "".join(traceback.format_exception(denied.value))]
    assert "HTTP 403" in str(denied.value)
    assert_clean("\n".join(texts), markers, "exception messages and tracebacks")
    assert_clean(caplog.text, markers, "the runtime's log records")


def opts(moto: MotoS3, **kw: Any) -> S3Options:
    return S3Options(endpoint_url=moto.endpoint_url, **kw)


def write_config(tmp_path: Path, bucket: str, dataset: str) -> Path:
    config = {
        "base_model": "builtin:tiny-llama",
        "datasets": [{"path": f"s3://{bucket}/{dataset}", "format": "alpaca"}],
        "training": {"max_steps": 2, "batch_size": 2, "sequence_len": 256, "logging_steps": 1},
        "output_dir": str(tmp_path / "out"),
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))
    return path


def test_validate_and_train_with_s3_data_and_env_credentials(
    moto: MotoS3,
    bucket: str,
    marker_env: dict[str, str],
    markers: Markers,
    tmp_path: Path,
) -> None:
    """`finetune validate --check-data` and `finetune train` (real training, dataset from
    S3, adapter uploaded to S3), and both failing on a missing S3 object."""
    env = marker_env | {"AWS_ENDPOINT_URL": moto.endpoint_url}
    good = write_config(tmp_path / "good", bucket, "data/train.jsonl")
    bad = write_config(tmp_path / "bad", bucket, "data/missing.jsonl")
    runs = {
        "validate": finetune(env, "validate", "--check-data", str(good)),
        "validate missing": finetune(env, "validate", "--check-data", str(bad)),
        "train": finetune(
            env,
            "train",
            str(good),
            "--no-progress-server",
            "--output-uri",
            f"s3://{bucket}/runs/1",
        ),  # fmt: skip
        "train missing": finetune(env, "train", str(bad), "--no-progress-server"),
        "train upload fails": finetune(
            env,
            "train",
            str(good),
            "--no-progress-server",
            "--no-resume",
            "--output-uri",
            "s3://no-such-bkt-sec/runs/1",
        ),  # fmt: skip
    }
    expected = {
        "validate": 0,
        "validate missing": None,
        "train": 0,
        "train missing": 6,
        "train upload fails": None,
    }
    for name, done in runs.items():
        output = done.stdout + done.stderr
        if expected[name] is None:
            assert done.returncode != 0, (name, output[-3000:])
        else:
            assert done.returncode == expected[name], (name, output[-3000:])
        assert_clean(output, markers, f"`finetune {name}` output")
    text = {name: done.stdout + done.stderr for name, done in runs.items()}
    assert "missing.jsonl" in text["validate missing"] and "missing.jsonl" in text["train missing"]
    assert "NoSuchBucket" in text["train upload fails"]
    assert all("Sending http request" in out for out in text.values()), "botocore DEBUG is on"
    uploaded = moto.client(aws_access_key_id="a", aws_secret_access_key="b").list_objects_v2(
        Bucket=bucket, Prefix="runs/1/"
    )
    assert any(o["Key"].endswith("adapter_config.json") for o in uploaded.get("Contents", []))
    # Nothing the run wrote to disk (checkpoints, configs, fetch state) holds them either.
    for path in (tmp_path / "good" / "out").rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000:
            assert_clean(path.read_bytes().decode("latin-1"), markers, str(path))
