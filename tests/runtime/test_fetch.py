"""`finetune fetch` against moto running as a real S3 server over HTTP.

Most tests point the fetcher at `FaultProxy` (tests/s3_server.py), a forwarding
proxy in front of moto that counts requests server-side and injects the faults
moto cannot produce (5xx answers, connections cut mid-body). Nothing is mocked.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from s3_server import TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY, FaultProxy, MotoS3

from finetune_runtime import cli
from finetune_runtime.commands.fetch import add_fetch_arguments, run_fetch
from finetune_runtime.errors import FetchError
from finetune_runtime.storage.fetch import fetch, fetch_detailed, resolve_uri
from finetune_runtime.storage.redact import redact
from finetune_runtime.storage.s3 import S3Options, parse_s3_uri
from finetune_runtime.storage.transfer import MiB, TransferSettings
from finetune_runtime.storage.upload import upload

KiB = 1024
# Small parts so a few hundred KiB already take the multipart (ranged GET) path.
FAST = TransferSettings(
    multipart_threshold=64 * KiB, multipart_chunksize=64 * KiB, max_concurrency=4, backoff=0.01
)
SECRETS = (TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY)


def opts(proxy: FaultProxy, **kw: Any) -> S3Options:
    return S3Options(endpoint_url=proxy.endpoint_url, **kw)


def leftovers(root: Path) -> list[str]:
    """Temp files a download may leave behind (must never survive)."""
    return sorted(p.name for p in root.rglob("*") if "finetune-part" in p.name)


def data_files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def put(client: Any, bucket: str, key: str, body: bytes) -> str:
    return client.put_object(Bucket=bucket, Key=key, Body=body)["ETag"].strip('"')


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- URIs and options ------------------------------------------------------------------


def test_parse_s3_uri() -> None:
    assert parse_s3_uri("s3://bkt/a/b.jsonl").key == "a/b.jsonl"
    assert parse_s3_uri("s3://bkt/dir/").is_prefix
    assert parse_s3_uri("s3://bkt").is_prefix
    assert not parse_s3_uri("s3://bkt/file").is_prefix
    with pytest.raises(FetchError, match="not an S3 URI: expected s3://BUCKET/KEY"):
        parse_s3_uri("https://bkt/x")
    with pytest.raises(FetchError, match="not a valid bucket name"):
        parse_s3_uri("s3:///key")


def test_addressing_style_defaults_to_path_for_custom_endpoints(
    monkeypatch: pytest.MonkeyPatch, s3_env: None
) -> None:
    assert S3Options().resolved_addressing_style() == "auto"
    assert S3Options(endpoint_url="http://minio:9000").resolved_addressing_style() == "path"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://ceph:7480")
    assert S3Options().resolved_endpoint() == "http://ceph:7480"
    assert S3Options().resolved_addressing_style() == "path"
    monkeypatch.setenv("FINETUNE_S3_ADDRESSING_STYLE", "virtual")
    assert S3Options().resolved_addressing_style() == "virtual"
    monkeypatch.setenv("FINETUNE_S3_ADDRESSING_STYLE", "sideways")
    with pytest.raises(FetchError, match="addressing style 'sideways'"):
        S3Options().resolved_addressing_style()


def test_redact_removes_known_and_shaped_secrets(s3_env: None) -> None:
    text = (
        f"key {TEST_ACCESS_KEY_ID} secret {TEST_SECRET_ACCESS_KEY} "
        "url https://b.s3.amazonaws.com/k?X-Amz-Credential=ASIAABCDEFGHIJKLMNOP%2F2024&"
        "X-Amz-Signature=deadbeef endpoint http://user:pa55@minio:9000/ "
        "Authorization: AWS4-HMAC-SHA256 Credential=AKIAZZZZZZZZZZZZZZZZ/x, Signature=abc123"
    )
    out = redact(text)
    for leaked in (*SECRETS, "ASIAABCDEFGHIJKLMNOP", "deadbeef", "pa55", "AKIAZZZZ", "abc123"):
        assert leaked not in out
    assert "http://[REDACTED]@minio:9000/" in out


# -- downloads --------------------------------------------------------------------------


def test_single_object_into_file_and_into_directory(
    s3_client: Any, s3_bucket: str, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    body = b'{"instruction": "hi", "output": "hello"}\n' * 10
    etag = put(s3_client, s3_bucket, "data/train.jsonl", body)

    path = fetch(
        f"s3://{s3_bucket}/data/train.jsonl",
        tmp_path / "a" / "train.jsonl",
        options=opts(s3_proxy),
        transfer=FAST,
    )
    assert path == tmp_path / "a" / "train.jsonl"
    assert path.read_bytes() == body
    manifest = json.loads((tmp_path / "a" / ".train.jsonl.finetune-fetch.json").read_text())
    assert manifest["complete"] is True
    assert manifest["source"] == f"s3://{s3_bucket}/data/train.jsonl"
    assert [(o["key"], o["etag"], o["size"]) for o in manifest["objects"]] == [
        ("data/train.jsonl", etag, len(body))
    ]

    (tmp_path / "dir").mkdir()
    path = fetch(
        f"s3://{s3_bucket}/data/train.jsonl",
        tmp_path / "dir",
        options=opts(s3_proxy),
        transfer=FAST,
    )
    assert path == tmp_path / "dir" / "train.jsonl" and path.read_bytes() == body
    path = fetch(
        f"s3://{s3_bucket}/data/train.jsonl",
        f"{tmp_path}/new-dir/",  # a trailing slash means "into this directory"
        options=opts(s3_proxy),
    )
    assert path == tmp_path / "new-dir" / "train.jsonl" and path.read_bytes() == body
    assert s3_proxy.get_objects("data/train.jsonl") == 3
    assert leftovers(tmp_path) == []


def test_prefix_with_nested_keys_mirrors_the_tree(
    s3_client: Any, s3_bucket: str, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    objects = {
        "ds/a.jsonl": b"a" * 10,
        "ds/sub/b.jsonl": b"b" * 20,
        "ds/sub/deeper/c.jsonl": b"",
        "other/x.jsonl": b"not fetched",
    }
    for key, body in objects.items():
        put(s3_client, s3_bucket, key, body)
    s3_client.put_object(Bucket=s3_bucket, Key="ds/emptydir/", Body=b"")  # a "folder" marker

    dest = tmp_path / "ds"
    report = fetch_detailed(f"s3://{s3_bucket}/ds/", dest, options=opts(s3_proxy), transfer=FAST)
    assert report.path == dest
    assert data_files(dest) == {
        "a.jsonl": b"a" * 10,
        "sub/b.jsonl": b"b" * 20,
        "sub/deeper/c.jsonl": b"",
    }
    assert sorted(report.downloaded) == ["ds/a.jsonl", "ds/sub/b.jsonl", "ds/sub/deeper/c.jsonl"]
    manifest = json.loads((dest / ".finetune-fetch.json").read_text())
    assert {o["path"]: o["size"] for o in manifest["objects"]} == {
        "a.jsonl": 10,
        "sub/b.jsonl": 20,
        "sub/deeper/c.jsonl": 0,
    }
    assert not (dest / ".finetune-fetch.journal").exists()

    # Without the trailing slash, a key that only exists as a prefix is fetched as one.
    again = fetch_detailed(f"s3://{s3_bucket}/ds", tmp_path / "ds2", options=opts(s3_proxy))
    assert again.uri == f"s3://{s3_bucket}/ds/"
    assert data_files(tmp_path / "ds2") == data_files(dest)


def test_large_object_is_downloaded_in_ranged_parts(
    s3_client: Any, s3_bucket: str, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    body = os.urandom(300 * KiB)
    put(s3_client, s3_bucket, "model/weights.bin", body)
    path = fetch(
        f"s3://{s3_bucket}/model/weights.bin",
        tmp_path / "w.bin",
        options=opts(s3_proxy),
        transfer=FAST,
    )
    assert md5(path.read_bytes()) == md5(body)
    gets = [r for r in s3_proxy.requests if r.is_get_object]
    assert len(gets) == 5  # 300 KiB in 64 KiB parts
    assert all(r.headers.get("Range", "").startswith("bytes=") for r in gets)
    # Every part is pinned to the listed version of the object.
    assert {r.headers.get("If-Match") for r in gets} == {f'"{md5(body)}"'}


def test_multipart_uploaded_object_round_trips(
    s3_client: Any, s3_bucket: str, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    """S3's minimum part size is 5 MiB, so this moves ~11 MiB each way."""
    src = tmp_path / "merged" / "model.safetensors"
    src.parent.mkdir()
    src.write_bytes(os.urandom(11 * MiB))
    big = TransferSettings(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, backoff=0.01)

    report = upload(src.parent, f"s3://{s3_bucket}/out", options=opts(s3_proxy), transfer=big)
    assert report.uri == f"s3://{s3_bucket}/out/"
    assert report.uploaded == ["out/model.safetensors"]
    etag = s3_client.head_object(Bucket=s3_bucket, Key="out/model.safetensors")["ETag"]
    assert etag.strip('"').endswith("-3")  # a real multipart object, not an MD5

    got = fetch(
        f"s3://{s3_bucket}/out/model.safetensors",
        tmp_path / "back.bin",
        options=opts(s3_proxy),
        transfer=FAST,
    )
    assert md5(got.read_bytes()) == md5(src.read_bytes())

    # Re-uploading an unchanged file computes the same multipart ETag locally and skips it.
    s3_proxy.clear()
    again = upload(src.parent, f"s3://{s3_bucket}/out/", options=opts(s3_proxy), transfer=big)
    assert again.unchanged == ["out/model.safetensors"] and again.uploaded == []
    assert s3_proxy.count(lambda r: r.method in ("PUT", "POST")) == 0


def test_cache_hit_skips_get_and_changed_etag_downloads_again(
    s3_client: Any, s3_bucket: str, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    uri = f"s3://{s3_bucket}/ds/"
    put(s3_client, s3_bucket, "ds/a.jsonl", b"version-1")
    put(s3_client, s3_bucket, "ds/b.jsonl", b"stable")
    dest = tmp_path / "ds"
    first = fetch_detailed(uri, dest, options=opts(s3_proxy), transfer=FAST)
    assert sorted(first.downloaded) == ["ds/a.jsonl", "ds/b.jsonl"]
    assert s3_proxy.get_objects() == 2

    s3_proxy.clear()
    second = fetch_detailed(uri, dest, options=opts(s3_proxy), transfer=FAST)
    assert second.downloaded == [] and sorted(second.cached) == ["ds/a.jsonl", "ds/b.jsonl"]
    assert s3_proxy.get_objects() == 0  # only the listing went to the server
    assert s3_proxy.count(lambda r: r.method == "GET" and "list-type" in r.query) == 1

    # Same size, new content: the ETag changes and only that object is fetched again.
    put(s3_client, s3_bucket, "ds/a.jsonl", b"version-2")
    s3_proxy.clear()
    third = fetch_detailed(uri, dest, options=opts(s3_proxy), transfer=FAST)
    assert third.downloaded == ["ds/a.jsonl"] and third.cached == ["ds/b.jsonl"]
    assert s3_proxy.get_objects("ds/a.jsonl") == 1 and s3_proxy.get_objects("ds/b.jsonl") == 0
    assert (dest / "a.jsonl").read_bytes() == b"version-2"


def test_locally_modified_or_deleted_files_are_restored(
    s3_client: Any, s3_bucket: str, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    put(s3_client, s3_bucket, "m/config.json", b'{"a": 1}')
    put(s3_client, s3_bucket, "m/tok.json", b'{"t": 2}')
    dest = tmp_path / "m"
    fetch(f"s3://{s3_bucket}/m/", dest, options=opts(s3_proxy), transfer=FAST)
    edited = dest / "config.json"
    before = edited.stat().st_mtime_ns
    edited.write_bytes(b'{"a": 9}')  # same size, different bytes
    os.utime(edited, ns=(before + 10**9, before + 10**9))
    (dest / "tok.json").unlink()
    s3_proxy.clear()
    report = fetch_detailed(f"s3://{s3_bucket}/m/", dest, options=opts(s3_proxy), transfer=FAST)
    assert sorted(report.downloaded) == ["m/config.json", "m/tok.json"]
    assert data_files(dest) == {"config.json": b'{"a": 1}', "tok.json": b'{"t": 2}'}


def test_objects_deleted_upstream_are_removed_but_user_files_kept(
    s3_client: Any, s3_bucket: str, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    put(s3_client, s3_bucket, "ds/keep.jsonl", b"k")
    put(s3_client, s3_bucket, "ds/old/gone.jsonl", b"g")
    dest = tmp_path / "ds"
    fetch(f"s3://{s3_bucket}/ds/", dest, options=opts(s3_proxy))
    (dest / "mine.txt").write_text("user notes")
    s3_client.delete_object(Bucket=s3_bucket, Key="ds/old/gone.jsonl")
    report = fetch_detailed(f"s3://{s3_bucket}/ds/", dest, options=opts(s3_proxy))
    assert report.removed == ["ds/old/gone.jsonl"]
    assert data_files(dest) == {"keep.jsonl": b"k", "mine.txt": b"user notes"}
    assert not (dest / "old").exists()


def test_concurrent_fetches_of_one_destination_download_once(
    s3_client: Any, s3_bucket: str, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    """Two local ranks resolving the same dataset share one download (flock)."""
    body = os.urandom(200 * KiB)
    put(s3_client, s3_bucket, "ds/a.bin", body)
    put(s3_client, s3_bucket, "ds/b.bin", body[::-1])
    reports: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            reports.append(
                fetch_detailed(
                    f"s3://{s3_bucket}/ds/", tmp_path / "ds", options=opts(s3_proxy), transfer=FAST
                )
            )
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(len(r.downloaded) for r in reports) == [0, 2]
    assert s3_proxy.get_objects() == 2 * 4  # each object once, in 4 ranged parts
    assert data_files(tmp_path / "ds") == {"a.bin": body, "b.bin": body[::-1]}


# -- errors -------------------------------------------------------------------------------


def test_missing_bucket_key_and_prefix_are_clear_errors(
    s3_bucket: str, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    with pytest.raises(FetchError) as err:
        fetch("s3://no-such-bucket-here/data.jsonl", tmp_path / "x", options=opts(s3_proxy))
    msg = str(err.value)
    assert "NoSuchBucket, HTTP 404" in msg and "'no-such-bucket-here' does not exist" in msg
    assert s3_proxy.endpoint_url in msg and "--endpoint-url" in msg

    with pytest.raises(FetchError) as err:
        fetch(f"s3://{s3_bucket}/nope.jsonl", tmp_path / "x", options=opts(s3_proxy))
    assert f"s3://{s3_bucket}/nope.jsonl failed (NoSuchKey, HTTP 404)" in str(err.value)
    assert "check the key" in str(err.value)

    with pytest.raises(FetchError, match="no objects under this prefix"):
        fetch(f"s3://{s3_bucket}/empty/", tmp_path / "x", options=opts(s3_proxy))
    assert not (tmp_path / "x").exists()
    assert err.value.exit_code == 6


def test_unreachable_endpoint(s3_env: None, tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(FetchError) as err:
        fetch(
            "s3://bkt/data.jsonl",
            tmp_path / "x",
            options=S3Options(endpoint_url=endpoint, max_attempts=1, connect_timeout=2),
        )
    msg = str(err.value)
    assert f"cannot reach the S3 endpoint {endpoint}" in msg
    assert "check --endpoint-url / AWS_ENDPOINT_URL" in msg


def test_keys_escaping_the_destination_are_refused(
    s3_client: Any, s3_bucket: str, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    put(s3_client, s3_bucket, "ds/ok.jsonl", b"ok")
    put(s3_client, s3_bucket, "ds/../../escape.txt", b"evil")
    with pytest.raises(FetchError, match="would land outside the destination"):
        fetch(f"s3://{s3_bucket}/ds/", tmp_path / "ds", options=opts(s3_proxy))
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "ds").exists()


# -- faults: 5xx, broken connections, interruption ---------------------------------------------


def test_transient_503s_are_retried(
    s3_client: Any, s3_bucket: str, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    body = os.urandom(100 * KiB)
    put(s3_client, s3_bucket, "ds/a.bin", body)
    listing = s3_proxy.fail(1, 503, "SlowDown", match=lambda r: "list-type" in r.query)
    gets = s3_proxy.fail(2, 503, "ServiceUnavailable", match=lambda r: r.is_get_object)
    path = fetch(
        f"s3://{s3_bucket}/ds/",
        tmp_path / "ds",
        options=opts(s3_proxy, max_attempts=3),
        transfer=FAST,
    )
    assert (path / "a.bin").read_bytes() == body
    assert listing.hits == 1 and gets.hits == 2
    assert leftovers(tmp_path) == []


def test_persistent_500s_fail_cleanly_and_keep_the_old_copy(
    s3_client: Any, s3_bucket: str, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    put(s3_client, s3_bucket, "ds/a.jsonl", b"good version")
    dest = tmp_path / "ds"
    fetch(f"s3://{s3_bucket}/ds/", dest, options=opts(s3_proxy))
    put(s3_client, s3_bucket, "ds/a.jsonl", b"newer version")
    fault = s3_proxy.fail(1000, 500, "InternalError", match=lambda r: r.is_get_object)
    settings = TransferSettings(attempts=2, backoff=0.01)
    with pytest.raises(FetchError) as err:
        fetch(
            f"s3://{s3_bucket}/ds/", dest, options=opts(s3_proxy, max_attempts=2), transfer=settings
        )
    msg = str(err.value)
    assert "(InternalError, HTTP 500)" in msg and "kept failing after retries" in msg
    assert "gave up after 2 rounds" in msg
    assert fault.hits == 2 * 2  # botocore's attempts × our rounds
    assert (dest / "a.jsonl").read_bytes() == b"good version"  # never half-replaced
    assert leftovers(tmp_path) == []


def test_connection_cut_mid_body_is_retried(
    s3_client: Any, s3_bucket: str, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    body = os.urandom(150 * KiB)
    put(s3_client, s3_bucket, "w.bin", body)
    cut = s3_proxy.cut(2, after=0.5)
    path = fetch(
        f"s3://{s3_bucket}/w.bin", tmp_path / "w.bin", options=opts(s3_proxy), transfer=FAST
    )
    assert cut.hits == 2
    assert md5(path.read_bytes()) == md5(body)
    assert leftovers(tmp_path) == []


def test_connection_always_cut_leaves_nothing_usable(
    s3_client: Any, s3_bucket: str, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    put(s3_client, s3_bucket, "w.bin", os.urandom(40 * KiB))
    s3_proxy.cut(1000, after=0.3)
    with pytest.raises(FetchError) as err:
        fetch(
            f"s3://{s3_bucket}/w.bin",
            tmp_path / "w.bin",
            options=opts(s3_proxy),
            transfer=TransferSettings(attempts=2, backoff=0.01),
        )
    assert "connection broke repeatedly mid-transfer" in str(err.value)
    assert not (tmp_path / "w.bin").exists()
    assert not (tmp_path / ".w.bin.finetune-fetch.json").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("size", [10 * KiB, 200 * KiB], ids=["single-get", "ranged-gets"])
def test_corrupted_bodies_are_detected_and_never_used(
    s3_client: Any, s3_bucket: str, s3_proxy: FaultProxy, tmp_path: Path, size: int
) -> None:
    """One flipped byte: caught by botocore's CRC (whole GET) or our MD5 check (ranged GETs)."""
    body = os.urandom(size)
    put(s3_client, s3_bucket, "x.bin", body)
    once = s3_proxy.corrupt(1)
    path = fetch(
        f"s3://{s3_bucket}/x.bin", tmp_path / "x.bin", options=opts(s3_proxy), transfer=FAST
    )
    assert once.hits == 1 and path.read_bytes() == body

    s3_proxy.corrupt(1000)
    with pytest.raises(FetchError) as err:
        fetch(f"s3://{s3_bucket}/x.bin", tmp_path / "y.bin", options=opts(s3_proxy), transfer=FAST)
    assert "the data arrived corrupted" in str(err.value)
    assert "gave up after 3 rounds" in str(err.value)
    assert not (tmp_path / "y.bin").exists() and leftovers(tmp_path) == []


def test_interrupted_prefix_fetch_resumes_without_refetching_finished_objects(
    s3_client: Any, s3_bucket: str, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    put(s3_client, s3_bucket, "ds/1.jsonl", b"one")
    put(s3_client, s3_bucket, "ds/2.jsonl", b"two")
    dest = tmp_path / "ds"
    # Leftovers of a run that was killed mid-download (ours and s3transfer's).
    dest.mkdir()
    (dest / ".2.jsonl.0badf00d.finetune-part").write_bytes(b"tw")
    (dest / ".2.jsonl.0badf00d.finetune-part.Ab12Cd34").write_bytes(b"t")

    s3_proxy.fail(
        1000, 403, "AccessDenied", match=lambda r: r.is_get_object and r.key.endswith("2.jsonl")
    )
    with pytest.raises(FetchError, match=r"ds/2.jsonl failed \(AccessDenied, HTTP 403\)"):
        fetch(f"s3://{s3_bucket}/ds/", dest, options=opts(s3_proxy), transfer=FAST)
    assert data_files(dest) == {"1.jsonl": b"one"}  # finished object is in place...
    assert not (dest / ".finetune-fetch.json").exists()  # ...but the fetch is not complete
    assert (dest / ".finetune-fetch.journal").exists()
    assert leftovers(dest) == []

    s3_proxy.clear()
    report = fetch_detailed(f"s3://{s3_bucket}/ds/", dest, options=opts(s3_proxy), transfer=FAST)
    assert report.cached == ["ds/1.jsonl"] and report.downloaded == ["ds/2.jsonl"]
    assert s3_proxy.get_objects() == 1
    assert data_files(dest) == {"1.jsonl": b"one", "2.jsonl": b"two"}
    assert json.loads((dest / ".finetune-fetch.json").read_text())["complete"] is True


# -- credentials ----------------------------------------------------------------------------


def test_access_denied_with_enforced_iam_names_the_fix_and_leaks_nothing(
    s3_server: MotoS3,
    s3_client: Any,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """moto checks credentials and IAM policies for real here (reset-auth)."""
    caplog.set_level(logging.DEBUG, logger="finetune_runtime")
    put(s3_client, s3_bucket, "ds/a.jsonl", b"secret data")
    iam = s3_server.client("iam")
    user = f"reader-{s3_bucket}"
    iam.create_user(UserName=user)
    iam.put_user_policy(
        UserName=user,
        PolicyName="only-other-bucket",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": ["s3:*"],
                        "Resource": ["arn:aws:s3:::someone-else*"],
                    }
                ],
            }
        ),
    )
    key = iam.create_access_key(UserName=user)["AccessKey"]

    with s3_server.enforce_auth():
        # Unknown key (the env's fake one): rejected by the server.
        with pytest.raises(FetchError) as unknown:
            fetch(
                f"s3://{s3_bucket}/ds/",
                tmp_path / "a",
                options=S3Options(endpoint_url=s3_server.endpoint_url, max_attempts=1),
            )
        # Valid key without permission on this bucket.
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        with pytest.raises(FetchError) as denied:
            fetch(
                f"s3://{s3_bucket}/ds/",
                tmp_path / "b",
                options=S3Options(endpoint_url=s3_server.endpoint_url, max_attempts=1),
            )

    assert "HTTP 403" in str(unknown.value) and "InvalidAccessKeyId" in str(unknown.value)
    assert "(AccessDenied, HTTP 403)" in str(denied.value)
    for err in (unknown, denied):
        assert "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" in str(err.value)
        assert "s3:ListBucket" in str(err.value)
    texts = [str(unknown.value), str(denied.value), caplog.text]
    for secret in (*SECRETS, key["AccessKeyId"], key["SecretAccessKey"]):
        assert all(secret not in text for text in texts)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_credentials_never_in_errors_logs_or_cli_output(
    s3_bucket: str,
    s3_proxy: FaultProxy,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG, logger="finetune_runtime")
    messages = []
    s3_proxy.fail(1000, 503, "SlowDown", match=lambda r: r.key == "flaky.jsonl")
    for uri in (
        f"s3://{s3_bucket}/flaky.jsonl",
        "s3://no-such-bucket-xyz/a",
        f"s3://{s3_bucket}/none",
    ):
        with pytest.raises(FetchError) as err:
            fetch(
                uri,
                tmp_path / "x",
                options=opts(s3_proxy, max_attempts=1),
                transfer=TransferSettings(attempts=1),
            )
        messages.append(str(err.value))
    parser = argparse.ArgumentParser()
    add_fetch_arguments(parser)
    code = run_fetch(
        parser.parse_args(
            [f"s3://{s3_bucket}/none", str(tmp_path / "y"), "--endpoint-url", s3_proxy.endpoint_url]
        )
    )
    out = capsys.readouterr()
    assert code == 6 and "finetune fetch: error:" in out.err and "HTTP 404" in out.err
    for text in (*messages, caplog.text, out.out, out.err):
        for secret in SECRETS:
            assert secret not in text


# -- uploads, resolve_uri, CLI -------------------------------------------------------------------


def test_upload_file_and_directory(
    s3_client: Any, s3_bucket: str, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    adapter = tmp_path / "adapter"
    (adapter / "sub").mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "sub" / "weights.bin").write_bytes(b"w" * 1000)
    (adapter / ".finetune-fetch.json").write_text("{}")  # fetch state is never uploaded

    report = upload(adapter, f"s3://{s3_bucket}/runs/job-1/adapter", options=opts(s3_proxy))
    assert report.uri == f"s3://{s3_bucket}/runs/job-1/adapter/"
    assert sorted(report.uploaded) == [
        "runs/job-1/adapter/adapter_config.json",
        "runs/job-1/adapter/sub/weights.bin",
    ]
    listed = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="runs/")["Contents"]
    assert sorted(o["Key"] for o in listed) == sorted(report.uploaded)
    got = s3_client.get_object(Bucket=s3_bucket, Key="runs/job-1/adapter/sub/weights.bin")
    assert got["Body"].read() == b"w" * 1000

    one = upload(
        adapter / "adapter_config.json", f"s3://{s3_bucket}/single/", options=opts(s3_proxy)
    )
    assert one.uri == f"s3://{s3_bucket}/single/adapter_config.json"
    (adapter / "adapter_config.json").write_text('{"r": 16}')
    s3_proxy.clear()
    changed = upload(adapter, f"s3://{s3_bucket}/runs/job-1/adapter/", options=opts(s3_proxy))
    assert changed.uploaded == ["runs/job-1/adapter/adapter_config.json"]
    assert changed.unchanged == ["runs/job-1/adapter/sub/weights.bin"]
    assert s3_proxy.count(lambda r: r.is_put_object) == 1
    with pytest.raises(FetchError, match="no such file or directory"):
        upload(tmp_path / "missing", f"s3://{s3_bucket}/x", options=opts(s3_proxy))


def test_upload_retries_transient_errors(
    s3_client: Any, s3_bucket: str, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    src = tmp_path / "adapter_model.safetensors"
    src.write_bytes(os.urandom(50 * KiB))
    fault = s3_proxy.fail(3, 503, "SlowDown", match=lambda r: r.is_put_object)
    report = upload(
        src,
        f"s3://{s3_bucket}/out/",
        options=opts(s3_proxy, max_attempts=2),
        transfer=TransferSettings(backoff=0.01),
    )
    assert fault.hits == 3  # two failed tries in round 1, one more in round 2
    assert report.uploaded == ["out/adapter_model.safetensors"]
    got = s3_client.get_object(Bucket=s3_bucket, Key="out/adapter_model.safetensors")
    assert got["Body"].read() == src.read_bytes()


def test_resolve_uri_caches_under_finetune_cache(
    s3_client: Any,
    s3_bucket: str,
    s3_proxy: FaultProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_proxy.endpoint_url)  # as the operator sets it
    put(s3_client, s3_bucket, "data/train.jsonl", b'{"text": "x"}\n')
    put(s3_client, s3_bucket, "models/tiny/config.json", b"{}")

    path = resolve_uri(f"s3://{s3_bucket}/data/train.jsonl")
    assert path == tmp_path / "cache" / "s3" / s3_bucket / "data" / "train.jsonl"
    assert path.read_bytes() == b'{"text": "x"}\n'
    assert resolve_uri(f"s3://{s3_bucket}/data/train.jsonl") == path
    assert s3_proxy.get_objects("data/train.jsonl") == 1

    model_dir = resolve_uri(f"s3://{s3_bucket}/models/tiny/")
    assert model_dir == tmp_path / "cache" / "s3" / s3_bucket / "models" / "tiny"
    assert (model_dir / "config.json").read_bytes() == b"{}"
    assert resolve_uri("relative/data.jsonl") == Path("relative/data.jsonl")
    assert resolve_uri(tmp_path) == tmp_path


def test_cli_fetch_and_upload(
    s3_client: Any,
    s3_bucket: str,
    s3_proxy: FaultProxy,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    put(s3_client, s3_bucket, "ds/a.jsonl", b"A")
    dest = tmp_path / "cache" / "ds"
    code = cli.main(
        [
            "fetch",
            f"s3://{s3_bucket}/ds/",
            str(dest),
            "--endpoint-url",
            s3_proxy.endpoint_url,
            "--region",
            "us-east-1",
            "--no-progress",
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out.strip() == str(dest)
    assert "fetched 1 object(s)" in out.err
    assert (dest / "a.jsonl").read_bytes() == b"A"

    (dest / "b.jsonl").write_bytes(b"B")
    code = cli.main(
        [
            "fetch",
            f"s3://{s3_bucket}/copy/",
            str(dest),
            "--upload",
            "--endpoint-url",
            s3_proxy.endpoint_url,
            "--path-style",
            "--no-progress",
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out.strip() == f"s3://{s3_bucket}/copy/"
    keys = [
        o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="copy/")["Contents"]
    ]
    assert sorted(keys) == ["copy/a.jsonl", "copy/b.jsonl"]


def test_anonymous_requests_are_unsigned_and_progress_bar_renders(
    s3_client: Any,
    s3_bucket: str,
    s3_proxy: FaultProxy,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s3_client.put_object(
        Bucket=s3_bucket, Key="pub/a.bin", Body=os.urandom(100 * KiB), ACL="public-read"
    )
    fetch(
        f"s3://{s3_bucket}/pub/",
        tmp_path / "pub",
        options=opts(s3_proxy, anonymous=True),
        transfer=FAST,
        show_progress=True,
    )
    assert s3_proxy.requests and all("Authorization" not in r.headers for r in s3_proxy.requests)
    assert f"s3://{s3_bucket}/pub/" in capsys.readouterr().err
