"""build_datasets end to end: splits, truncation, several datasets, packing stats, S3."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from finetune_runtime.config import parse_config
from finetune_runtime.data import TokenizedDataset, build_datasets, packaged_data_path
from finetune_runtime.data.splits import split_indices

DATA = Path(__file__).parent / "data"


def config(datasets: list[dict[str, Any]], seed: int = 42, **training: Any):
    return parse_config(
        {
            "base_model": "builtin:tiny-llama",
            "datasets": datasets,
            "training": {"sequence_len": 512, **training},
            "seed": seed,
        }
    )


def numbered(tmp_path: Path, n: int, name: str = "n.jsonl") -> Path:
    path = tmp_path / name
    path.write_text(
        "".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(n)), encoding="utf-8"
    )
    return path


def texts(tokenizer: Any, dataset: TokenizedDataset | None) -> list[str]:
    assert dataset is not None
    return [tokenizer.decode(e["input_ids"], skip_special_tokens=True) for e in dataset]


def test_split_is_deterministic_and_seeded(tiny_tokenizer, tmp_path):
    path = numbered(tmp_path, 50)
    ds = [{"path": str(path), "format": "completion", "splits": {"validation": 0.2}}]
    first = build_datasets(config(ds), tiny_tokenizer)
    again = build_datasets(config(ds), tiny_tokenizer)
    other = build_datasets(config(ds, seed=7), tiny_tokenizer)
    assert len(first.train) == 40 and len(first.eval) == 10
    assert texts(tiny_tokenizer, first.eval) == texts(tiny_tokenizer, again.eval)
    assert texts(tiny_tokenizer, first.eval) != texts(tiny_tokenizer, other.eval)
    everything = texts(tiny_tokenizer, first.train) + texts(tiny_tokenizer, first.eval)
    assert sorted(everything) == sorted(f"row {i}" for i in range(50))
    # file order is kept inside each split
    assert texts(tiny_tokenizer, first.train) == sorted(
        texts(tiny_tokenizer, first.train), key=lambda t: int(t.split()[1])
    )


def test_validation_as_row_count_and_as_fraction(tiny_tokenizer, tmp_path):
    path = numbered(tmp_path, 30)
    rows = build_datasets(
        config([{"path": str(path), "format": "completion", "splits": {"validation": 4}}]),
        tiny_tokenizer,
    )
    assert (len(rows.train), len(rows.eval)) == (26, 4)
    small = build_datasets(
        config([{"path": str(path), "format": "completion", "splits": {"validation": 0.001}}]),
        tiny_tokenizer,
    )
    assert len(small.eval) == 1  # a positive fraction never rounds to nothing
    none = build_datasets(config([{"path": str(path), "format": "completion"}]), tiny_tokenizer)
    assert none.eval is None and len(none.train) == 30


def test_split_indices_salt_differs_per_dataset():
    assert split_indices(100, 10, 42, 0) == split_indices(100, 10, 42, 0)
    assert split_indices(100, 10, 42, 0)[1] != split_indices(100, 10, 42, 1)[1]


def test_several_datasets_are_concatenated_with_stats_each(tiny_tokenizer):
    bundle = build_datasets(
        config(
            [
                {"path": "alpaca.jsonl", "format": "alpaca", "splits": {"validation": 1}},
                {"path": "sharegpt.json", "format": "sharegpt"},
                {"path": "completion.jsonl", "format": "completion"},
            ]
        ),
        tiny_tokenizer,
        base_dir=DATA,
    )
    stats = bundle.stats
    assert [(s.format, s.rows, s.train_examples, s.eval_examples) for s in stats.datasets] == [
        ("alpaca", 6, 5, 1),
        ("sharegpt", 3, 3, 0),
        ("completion", 3, 3, 0),
    ]
    assert len(bundle.train) == stats.train_examples == stats.train_rows == 11
    assert len(bundle.eval) == stats.eval_examples == 1
    assert stats.train_tokens == bundle.train.num_tokens == sum(bundle.train.lengths)
    assert stats.train_tokens == sum(s.train_tokens for s in stats.datasets)
    assert stats.packing_efficiency is None
    for s in stats.datasets:
        assert 0 < s.trainable_tokens < s.train_tokens
    # order: dataset by dataset
    assert texts(tiny_tokenizer, bundle.train)[-1] == "Silver rivers run under the quiet hills."
    assert json.loads(json.dumps(stats.as_dict()))["datasets"][1]["format"] == "sharegpt"


def test_truncation_and_dropping_are_counted(tiny_tokenizer, tmp_path):
    path = tmp_path / "a.jsonl"
    rows = [
        {"instruction": "Short.", "output": "Fine."},
        {"instruction": "Long " * 60, "output": "Never seen."},  # prompt alone > 64 tokens
        {"instruction": "Mid.", "output": "word " * 80},  # response cut, still trainable
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bundle = build_datasets(
        config(
            [{"path": str(path), "format": "custom", "prompt_format": "Q: {instruction}\nA: "}],
            sequence_len=64,
        ),
        tiny_tokenizer,
    )
    stats = bundle.stats.datasets[0]
    assert (stats.rows, stats.train_examples, stats.truncated, stats.dropped) == (3, 2, 2, 1)
    assert all(len(e["input_ids"]) <= 64 for e in bundle.train)
    cut = bundle.train[1]
    assert len(cut["input_ids"]) == 64 and cut["input_ids"][-1] != tiny_tokenizer.eos_token_id


def test_packing_produces_rows_with_position_ids_and_reports_efficiency(tiny_tokenizer):
    ds = [{"path": str(packaged_data_path()), "format": "alpaca", "splits": {"validation": 0.1}}]
    plain = build_datasets(config(ds, sequence_len=512), tiny_tokenizer)
    packed = build_datasets(config(ds, sequence_len=512, sample_packing=True), tiny_tokenizer)
    stats = packed.stats
    assert packed.train.packed and not plain.train.packed
    assert stats.train_examples == len(plain.train) == 140
    assert stats.train_rows == len(packed.train) < len(plain.train)
    assert packed.train.num_tokens == plain.train.num_tokens == stats.train_tokens
    assert stats.packing_efficiency == pytest.approx(stats.train_tokens / (stats.train_rows * 512))
    assert stats.packing_efficiency > 0.85
    for row in packed.train:
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"]) <= 512
    assert packed.eval is not None and packed.eval.packed
    assert packed.eval.num_tokens == plain.eval.num_tokens
    # the same trained tokens, packed or not (a packed example's first label is never trained)
    trained = sorted(t for e in plain.train for t in e["labels"][1:] if t != -100)
    assert sorted(t for e in packed.train for t in e["labels"] if t != -100) == trained


def test_json_suffix_holding_json_lines_and_directories(tiny_tokenizer, tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    numbered(folder, 3, "part-0.json")  # JSON lines behind a .json name: sniffed
    numbered(folder, 2, "part-1.jsonl")
    (folder / "README.md").write_text("not data")
    bundle = build_datasets(
        config([{"path": "shards", "format": "completion"}]), tiny_tokenizer, base_dir=tmp_path
    )
    assert texts(tiny_tokenizer, bundle.train) == ["row 0", "row 1", "row 2", "row 0", "row 1"]


def test_s3_dataset_is_fetched_through_the_cache(
    tiny_tokenizer, s3_client, s3_bucket, s3_server, monkeypatch
):
    """The dataset lives in a moto S3 server reached over HTTP; resolve_uri caches it."""
    body = "".join(json.dumps({"text": f"remote {i}"}) + "\n" for i in range(4))
    s3_client.put_object(Bucket=s3_bucket, Key="sets/train.jsonl", Body=body.encode())
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    uri = f"s3://{s3_bucket}/sets/train.jsonl"
    bundle = build_datasets(config([{"path": uri, "format": "completion"}]), tiny_tokenizer)
    assert texts(tiny_tokenizer, bundle.train) == [f"remote {i}" for i in range(4)]
    assert bundle.stats.datasets[0].path == uri
    s3_client.put_object(Bucket=s3_bucket, Key="sets/bad.jsonl", Body=b'{"text": "ok"}\n{"x": 1}\n')
    from finetune_runtime.errors import DatasetError

    with pytest.raises(DatasetError) as info:
        build_datasets(
            config([{"path": f"s3://{s3_bucket}/sets/bad.jsonl", "format": "completion"}]),
            tiny_tokenizer,
        )
    assert str(info.value).startswith(f"s3://{s3_bucket}/sets/bad.jsonl:2: ")
