"""`finetune train --output-uri [--merge]`: the finished weights land in S3 (moto over HTTP)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from train_helpers import tiny_config

from finetune_runtime.cli import main
from finetune_runtime.errors import ConfigError
from finetune_runtime.storage import publish as outputs

URI = "s3://bucket/runs/job-1"


def test_target_from_flags_then_environment() -> None:
    env = {
        outputs.URI_ENV: "s3://from-env/x/",
        outputs.MERGE_ENV: "true",
        outputs.ENDPOINT_ENV: "http://minio:9000",
        outputs.REGION_ENV: "eu-west-1",
    }
    assert outputs.resolve_target(None, None, env=env) == outputs.OutputTarget(
        "s3://from-env/x", merge=True, endpoint_url="http://minio:9000", region="eu-west-1"
    )
    flagged = outputs.resolve_target(URI, False, "http://other:1", None, env=env)
    assert flagged == outputs.OutputTarget(URI, False, "http://other:1", "eu-west-1")
    assert outputs.resolve_target(None, None, env={}) is None


@pytest.mark.parametrize(
    ("uri", "merge", "env", "message"),
    [
        (None, True, {}, "--merge (FINETUNE_OUTPUT_MERGE) needs an output URI"),
        ("/local/dir", None, {}, "'/local/dir' is not an s3://bucket/prefix URI"),
        ("s3://", None, {}, "is not an s3://bucket/prefix URI"),
        (URI, None, {outputs.MERGE_ENV: "maybe"}, "FINETUNE_OUTPUT_MERGE='maybe'"),
    ],
)
def test_bad_targets_are_refused(
    uri: str | None, merge: bool | None, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        outputs.resolve_target(uri, merge, env=env)


def test_uris_name_each_part() -> None:
    target = outputs.OutputTarget(URI, merge=True)
    assert outputs.output_uris(target, "adapter") == {
        "adapter": f"{URI}/adapter/",
        "merged": f"{URI}/merged/",
    }
    assert outputs.output_uris(outputs.OutputTarget(URI), "model") == {"model": f"{URI}/model/"}
    with pytest.raises(ConfigError, match="full fine-tune"):
        outputs.check_target(target, "none")


def _keys(client: Any, bucket: str, prefix: str) -> set[str]:
    listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {item["Key"][len(prefix) :] for item in listing.get("Contents", [])}


def test_train_uploads_adapter_and_merged_model(
    tmp_path: Path, s3_server: Any, s3_client: Any, s3_bucket: str, tiny_model_dir: Path
) -> None:
    config = tiny_config(tmp_path, training={"max_steps": 2})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    uri = f"s3://{s3_bucket}/runs/job-1"
    code = main(
        [
            "train",
            str(path),
            "--no-progress-server",
            "--output-uri",
            uri,
            "--merge",
            "--output-endpoint-url",
            s3_server.endpoint_url,
        ]
    )
    assert code == 0
    out = Path(config.output_dir)
    adapter = _keys(s3_client, s3_bucket, "runs/job-1/adapter/")
    assert adapter == {p.name for p in (out / "adapter").iterdir()}
    assert "adapter_model.safetensors" in adapter
    merged = _keys(s3_client, s3_bucket, "runs/job-1/merged/")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= merged
    body = s3_client.get_object(
        Bucket=s3_bucket, Key="runs/job-1/adapter/adapter_model.safetensors"
    )
    assert body["Body"].read() == (out / "adapter" / "adapter_model.safetensors").read_bytes()


def test_merge_with_a_full_fine_tune_fails_before_training(tmp_path: Path, capsys) -> None:
    config = tiny_config(tmp_path, adapter="none")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    code = main(["train", str(path), "--no-progress-server", "--output-uri", URI, "--merge"])
    assert code == ConfigError.exit_code
    assert "has no adapter to merge" in capsys.readouterr().err
    assert not Path(config.output_dir).exists()


def test_failed_upload_fails_the_run(
    tmp_path: Path, s3_server: Any, s3_env: None, tiny_model_dir: Path, capsys
) -> None:
    """No such bucket: exit 6 (FetchError), so the operator restarts the gang."""
    config = tiny_config(tmp_path, training={"max_steps": 1})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    argv = ["train", str(path), "--no-progress-server", "--output-uri", "s3://no-such-bucket/x"]
    code = main([*argv, "--output-endpoint-url", s3_server.endpoint_url])
    assert code == 6
    assert "no-such-bucket" in capsys.readouterr().err


def test_progress_host_from_flag_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 binds its progress endpoint where it is told (a pod IP in the e2e tests)."""
    from finetune_runtime.cli import build_parser
    from finetune_runtime.commands.train import train_options

    parser = build_parser()
    monkeypatch.delenv("FINETUNE_PROGRESS_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # a laptop: loopback only
    assert train_options(parser.parse_args(["train", "c.yaml"]), None).progress_host == "127.0.0.1"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")  # a pod: every interface
    assert train_options(parser.parse_args(["train", "c.yaml"]), None).progress_host == "0.0.0.0"
    monkeypatch.setenv("FINETUNE_PROGRESS_HOST", "127.0.0.7")
    assert train_options(parser.parse_args(["train", "c.yaml"]), None).progress_host == "127.0.0.7"
    args = parser.parse_args(["train", "c.yaml", "--progress-host", "10.0.0.1"])
    assert train_options(args, None).progress_host == "10.0.0.1"
