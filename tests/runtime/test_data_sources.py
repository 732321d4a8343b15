"""Dataset sources through the `datasets` library, and format auto-detection.

Every dataset is built here, locally: parquet/csv/arrow files written by the
`datasets` library, a `save_to_disk` folder, and a hub-style cache entry made by a
real `datasets` builder, read back with HF_HUB_OFFLINE=1. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from finetune_runtime.config import parse_config
from finetune_runtime.data import build_datasets
from finetune_runtime.errors import DatasetError

ROWS = [
    {"instruction": f"Say the number {i}.", "input": "", "output": f"The number is {i}."}
    for i in range(6)
]


def config(*datasets: dict[str, Any], **top: Any) -> Any:
    return parse_config({"base_model": "builtin:tiny-llama", "datasets": list(datasets), **top})


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def decoded(tokenizer: Any, bundle: Any) -> list[str]:
    return [tokenizer.decode(e["input_ids"]) for e in bundle.train]


def make_hub_cache_entry(cache: Path, repo_id: str, splits: dict[str, Path], name: str) -> None:
    """What `load_dataset(repo_id)` leaves in the datasets cache after a download.

    A real `datasets` JSON builder, configured as the hub configures it (one builder
    config `name` holding the data files), prepares the Arrow files; the cache folder
    then gets the hub's `namespace___dataset` name, which the builder only gives repo
    ids whose data files it could resolve on the hub.
    """
    from datasets.data_files import DataFilesDict
    from datasets.load import configure_builder_class
    from datasets.packaged_modules.json.json import Json, JsonConfig

    namespace, dataset = repo_id.split("/")
    files = DataFilesDict.from_patterns({k: [str(v)] for k, v in splits.items()})
    builder_config = JsonConfig(name=name, data_files=files)
    cls = configure_builder_class(
        Json, builder_configs=[builder_config], default_config_name=name, dataset_name=dataset
    )
    cls(cache_dir=str(cache), hash="0123456789abcdef", dataset_name=dataset).download_and_prepare()
    (cache / dataset).rename(cache / f"{namespace}___{dataset}")


def test_hub_id_from_the_offline_cache_with_split(tiny_tokenizer, tmp_path, hf_datasets_cache):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    test = write_jsonl(tmp_path / "test.jsonl", ROWS[:2])
    make_hub_cache_entry(
        hf_datasets_cache, "someorg/alpaca_tiny", {"train": train, "test": test}, "default"
    )

    bundle = build_datasets(config({"path": "someorg/alpaca_tiny"}), tiny_tokenizer)
    assert len(bundle.train) == 6
    assert bundle.stats.datasets[0].format == "alpaca"
    assert bundle.stats.datasets[0].format_detected
    assert "The number is 5." in decoded(tiny_tokenizer, bundle)[5]

    picked = build_datasets(
        config({"path": "someorg/alpaca_tiny", "split": "test"}), tiny_tokenizer
    )
    assert len(picked.train) == 2

    with pytest.raises(DatasetError, match="split 'validation' not found; the dataset has"):
        build_datasets(
            config({"path": "someorg/alpaca_tiny", "split": "validation"}), tiny_tokenizer
        )
    with pytest.raises(DatasetError, match="name='other'.*not in the local datasets cache"):
        build_datasets(config({"path": "someorg/alpaca_tiny", "name": "other"}), tiny_tokenizer)


def test_parquet_csv_arrow_and_save_to_disk_match_jsonl(
    tiny_tokenizer, tmp_path, hf_datasets_cache
):
    import datasets

    jsonl = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    reference = decoded(
        tiny_tokenizer, build_datasets(config({"path": str(jsonl)}), tiny_tokenizer)
    )
    table = datasets.Dataset.from_list(ROWS)
    table.to_parquet(str(tmp_path / "rows.parquet"))
    table.to_csv(str(tmp_path / "rows.csv"), index=False)
    table.save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    shards = tmp_path / "shards"
    shards.mkdir()
    table.select(range(3)).to_parquet(str(shards / "a.parquet"))
    table.select(range(3, 6)).to_parquet(str(shards / "b.parquet"))
    (shards / "README.md").write_text("not data")

    for path in ("rows.parquet", "rows.csv", str(arrow), "saved", "shards"):
        bundle = build_datasets(config({"path": path}), tiny_tokenizer, base_dir=tmp_path)
        assert decoded(tiny_tokenizer, bundle) == reference, path

    picked = build_datasets(
        config({"path": "shards", "data_files": "b.parquet"}), tiny_tokenizer, base_dir=tmp_path
    )
    assert decoded(tiny_tokenizer, picked) == reference[3:]


def test_bad_parquet_row_names_the_file_and_row(tiny_tokenizer, tmp_path, hf_datasets_cache):
    import datasets

    rows = [dict(ROWS[0]), {"instruction": "no answer", "input": "", "output": None}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(DatasetError) as err:
        build_datasets(config({"path": "bad.parquet"}), tiny_tokenizer, base_dir=tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'bad.parquet'}: row 1: field 'output': required field is missing "
        "(fields present: input, instruction, output) (format alpaca)"
    )


def test_formats_are_detected_from_the_first_row(tiny_tokenizer, tmp_path):
    chat = write_jsonl(
        tmp_path / "chat.jsonl",
        [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}],
    )
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "Once upon a time."}])
    alpaca = write_jsonl(tmp_path / "alpaca.jsonl", ROWS[:1])
    bundle = build_datasets(
        config(
            {"path": str(chat)}, {"path": str(text)}, {"path": str(alpaca)}, chat_template="chatml"
        ),
        tiny_tokenizer,
    )
    found = [(d.format, d.format_detected) for d in bundle.stats.datasets]
    assert found == [("sharegpt", True), ("completion", True), ("alpaca", True)]
    stated = build_datasets(config({"path": str(text), "format": "completion"}), tiny_tokenizer)
    assert stated.stats.datasets[0].format_detected is False


def test_validate_reports_the_detected_format(tmp_path, capsys):
    from finetune_runtime.cli import main

    write_jsonl(tmp_path / "text.jsonl", [{"text": "Once upon a time."}])
    cfg = tmp_path / "c.yaml"
    cfg.write_text("base_model: builtin:tiny-llama\ndatasets:\n  - path: text.jsonl\n")
    assert main(["validate", str(cfg), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["datasets"][0]["format"] == "completion"
    assert summary["datasets"][0]["format_detected"] is True
    assert main(["validate", str(cfg)]) == 0
    assert "[completion, detected]" in capsys.readouterr().out


def test_s3_parquet_object_through_the_fetch_cache(
    tiny_tokenizer, tmp_path, s3_client, s3_bucket, s3_server, hf_datasets_cache, monkeypatch
):
    import datasets

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    local = tmp_path / "rows.parquet"
    datasets.Dataset.from_list(ROWS).to_parquet(str(local))
    s3_client.upload_file(str(local), s3_bucket, "data/rows.parquet")
    bundle = build_datasets(config({"path": f"s3://{s3_bucket}/data/rows.parquet"}), tiny_tokenizer)
    assert len(bundle.train) == len(ROWS)
