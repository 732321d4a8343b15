"""The prepared dataset cache: same examples as in memory, reused, rebuilt when stale.

Real tokenization with the builtin tiny tokenizer, real forked worker processes,
real training for the preprocess-then-train round trip.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from finetune_runtime.config import parse_config
from finetune_runtime.data import build_datasets, packaged_data_path, pipeline
from finetune_runtime.data import encode as encode_module
from finetune_runtime.data.prepared import open_prepared, prepare, prepared_root


def config(tmp_path: Path, **training: Any) -> Any:
    return parse_config(
        {
            "base_model": "builtin:tiny-llama",
            "datasets": [
                {"path": str(packaged_data_path()), "splits": {"validation": 0.2}},
                {"path": str(packaged_data_path()), "format": "alpaca", "prompt_style": "chat"},
            ],
            "chat_template": "chatml",
            "training": {"sequence_len": 128, **training},
            "output_dir": str(tmp_path / "out"),
        }
    )


def items(dataset: Any) -> list[dict[str, list[int]]]:
    return [dict(dataset[i]) for i in range(len(dataset))] if dataset is not None else []


@pytest.mark.parametrize("packing", [False, True])
def test_cache_serves_exactly_the_in_memory_examples(
    tiny_tokenizer, tmp_path, monkeypatch, packing
):
    cfg = config(tmp_path, sample_packing=packing)
    reference = build_datasets(cfg, tiny_tokenizer, processes=1)
    # Small chunks on two forked workers: chunk order and split flags must not matter.
    monkeypatch.setattr(pipeline, "CHUNK_ROWS", 7)
    done = prepare(cfg, tiny_tokenizer, processes=2)
    assert not done.reused and done.folder.parent == prepared_root(cfg)
    cached = open_prepared(done.folder, cfg)
    assert items(cached.train) == items(reference.train)
    assert items(cached.eval) == items(reference.eval)
    assert cached.stats.as_dict() == reference.stats.as_dict()
    assert cached.train.lengths == reference.train.lengths
    # int32 tokens + a 1-byte mask + offsets: about 5 bytes per token, not tens.
    assert cached.train.nbytes() / cached.train.num_tokens < 7
    assert isinstance(cached.train.ids, np.memmap)


def test_same_inputs_reuse_and_changed_inputs_rebuild(tiny_tokenizer, tmp_path, caplog):
    data = tmp_path / "rows.jsonl"
    data.write_text(packaged_data_path().read_text(encoding="utf-8"), encoding="utf-8")
    cfg = parse_config(
        {
            "base_model": "builtin:tiny-llama",
            "datasets": [{"path": str(data)}],
            "dataset_prepared_path": str(tmp_path / "prepared"),
            "training": {"sequence_len": 128},
        }
    )
    first = prepare(cfg, tiny_tokenizer)
    caplog.set_level(logging.INFO, logger="finetune_runtime.data.prepared")
    again = prepare(cfg, tiny_tokenizer)
    assert again.reused and again.folder == first.folder
    assert "reusing the prepared dataset cache" in caplog.text

    caplog.clear()
    data.write_text(data.read_text(encoding="utf-8").replace("the", "a"), encoding="utf-8")
    changed = prepare(cfg, tiny_tokenizer)
    assert not changed.reused and changed.folder != first.folder
    assert "is stale (changed: datasets[0].content); rebuilding" in caplog.text
    assert not first.folder.exists()  # the stale cache is replaced, not kept beside

    longer = cfg.model_copy(
        update={"training": cfg.training.model_copy(update={"sequence_len": 256})}
    )
    caplog.clear()
    assert not prepare(longer, tiny_tokenizer).reused
    assert "changed: sequence_len" in caplog.text


def test_preparation_streams_with_bounded_chunks_in_flight(tiny_tokenizer, tmp_path):
    """However long the input, only a few chunks are read ahead of the consumer."""
    from finetune_runtime.data.encode import ChunkEncoder
    from finetune_runtime.data.formats import FormatContext
    from finetune_runtime.data.readers import Row
    from finetune_runtime.data.tokenize import SegmentTokenizer

    settings = config(tmp_path).datasets[0].model_copy(update={"format": "alpaca"})
    encoder = ChunkEncoder(FormatContext(settings, False), SegmentTokenizer(tiny_tokenizer, 256))
    produced = itertools.count()

    def endless() -> Any:
        row = Row({"instruction": "say hi", "output": "hi"}, 1, 0, "line 1")
        for _ in produced:
            yield [("endless.jsonl", row)] * 4, [False] * 4

    results = encode_module.encode_chunks(encoder, endless(), processes=2)
    first = next(results)
    assert len(first.train.lengths) == 4
    read_ahead = next(produced)
    results.close()
    assert read_ahead <= 2 * encode_module.IN_FLIGHT_PER_PROCESS + 1


def test_preprocess_then_train_reuses_the_cache(tmp_path, caplog):
    from finetune_runtime.cli import main

    data = tmp_path / "rows.jsonl"
    lines = packaged_data_path().read_text(encoding="utf-8").splitlines()[:8]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        "base_model: builtin:tiny-llama\n"
        "datasets:\n  - path: rows.jsonl\n"
        f"output_dir: {tmp_path / 'out'}\n"
        "training: {sequence_len: 128, batch_size: 4, max_steps: 1, precision: fp32}\n"
    )
    caplog.set_level(logging.INFO)
    assert main(["preprocess", str(cfg)]) == 0
    assert "preparing the dataset cache" in caplog.text
    caplog.clear()
    assert main(["train", str(cfg), "--no-progress-server"]) == 0
    assert "reusing the prepared dataset cache" in caplog.text
    assert "preparing the dataset cache" not in caplog.text
    assert (tmp_path / "out" / "adapter").is_dir()


def test_parquet_sources_are_keyed_by_their_content(tiny_tokenizer, tmp_path, hf_datasets_cache):
    import datasets

    rows = [{"text": f"row number {i}"} for i in range(5)]
    path = tmp_path / "rows.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    cfg = parse_config(
        {
            "base_model": "builtin:tiny-llama",
            "datasets": [{"path": str(path)}],
            "output_dir": str(tmp_path / "out"),
            "training": {"sequence_len": 64},
        }
    )
    first = prepare(cfg, tiny_tokenizer)
    assert prepare(cfg, tiny_tokenizer).reused
    datasets.Dataset.from_list(rows[:3]).to_parquet(str(path))
    rebuilt = prepare(cfg, tiny_tokenizer)
    assert not rebuilt.reused and rebuilt.key != first.key
    assert len(open_prepared(rebuilt.folder, cfg).train) == 3
