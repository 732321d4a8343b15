"""Bench 6 (bench.mid): paired per-round ratios on CPU time, the headline keys, the report,
and one real round of all three variants on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.common import LoadLog, merge_headline
from bench.mid import _steps, headline, run_rounds, summarize
from bench.report import _mid


def _run(round_: int, variant: str, cpu: float, wall: float, rss: float) -> dict:
    return {
        "round": round_,
        "variant": variant,
        "tokens_per_cpu_s": cpu,
        "tokens_per_wall_s": wall,
        "tokens": 400,
        "step_tokens": [100] * 4,
        "peak_rss_mib": rss,
        "precision": "fp32",
        "kernels": "none",
        "attention": "sdpa",
    }


def test_ratios_are_medians_of_per_round_pairs() -> None:
    runs = []
    for r, (padded, flat, ours) in enumerate([(100, 150, 200), (50, 80, 120), (90, 100, 90)]):
        runs += [
            _run(r, "hf_padded", padded, padded / 3, 1000),
            _run(r, "hf_flattened", flat, flat / 3, 900),
            _run(r, "ours", ours, ours / 4, 600 + r * 100),
        ]
    summary = summarize(runs)
    cpu = summary["ratios"]["cpu_vs_hf_padded"]
    assert cpu["rounds"] == pytest.approx([2.0, 2.4, 1.0]) and cpu["median"] == pytest.approx(2.0)
    # Not the ratio of medians (120 / 90): pairs are what the load cannot skew.
    assert summary["ratios"]["cpu_vs_hf_flattened"]["median"] == pytest.approx(200 / 150)
    assert summary["ratios"]["wall_vs_hf_padded"]["median"] == pytest.approx(2.0 * 3 / 4)
    assert headline(summary) == {
        "train_ratio_vs_hf_padded_mid": 2.0,
        "train_ratio_vs_hf_flattened_mid": round(200 / 150, 3),
        "train_peak_rss_ratio_vs_hf_mid": 0.7,
    }


def test_steps_time_wall_and_cpu_after_warmup() -> None:
    marks = [(0.0, 0.0, 0), (1.0, 0.5, 10), (3.0, 1.5, 30), (4.0, 1.75, 35)]
    out = _steps(marks, warmup=1, steps=2)
    # The clock starts at the end of the warmup step (the first mark).
    assert out["step_wall_seconds"] == [1.0, 2.0] and out["step_cpu_seconds"] == [0.5, 1.0]
    assert out["step_tokens"] == [10, 20] and out["tokens_per_cpu_s"] == pytest.approx(30 / 1.5)
    with pytest.raises(RuntimeError, match="only 4 steps recorded"):
        _steps(marks, warmup=2, steps=3)


def test_headline_merge_keeps_other_benches_keys(tmp_path: Path) -> None:
    path = tmp_path / "headline.json"
    path.write_text(json.dumps({"other_bench_key": 3.5, "train_ratio_vs_hf_padded_mid": 0.1}))
    merge_headline({"train_ratio_vs_hf_padded_mid": 1.9}, path)
    assert json.loads(path.read_text()) == {
        "other_bench_key": 3.5,
        "train_ratio_vs_hf_padded_mid": 1.9,
    }


def test_one_real_round_on_the_tiny_model(tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """All three variants train for real (HF padded, HF flattened, ours) and are
    reported with CPU time, the same token budget and the headline statistic. The
    workers run in this process (a subprocess each would triple the imports)."""
    import logging

    import torch

    import bench.common
    from bench.mid import worker

    monkeypatch.setattr(bench.common, "run_worker", lambda module, args, timeout: worker(args))
    args = {
        "data": str(tiny_data),
        "model": "builtin:tiny-llama",
        "batch_size": 1,
        "accumulation": 1,
        "sequence_len": 256,
        "warmup": 1,
        "steps": 1,
        "threads": torch.get_num_threads(),
    }
    try:
        result = run_rounds(args, repeats=1, load=LoadLog())
    finally:
        logging.disable(logging.NOTSET)  # the worker silences warnings for its process
    assert [r["variant"] for r in result["runs"]] == ["hf_padded", "hf_flattened", "ours"]
    assert all(r["tokens_per_cpu_s"] > 0 and r["step_cpu_seconds"][0] > 0 for r in result["runs"])
    ours = result["variants"]["ours"]
    assert ours["attention"] == "finetune_varlen_sdpa" and ours["kernels"] == "torch"
    assert result["variants"]["hf_flattened"]["kernels"] == "none"
    assert set(result["headline"]) == {
        "train_ratio_vs_hf_padded_mid",
        "train_ratio_vs_hf_flattened_mid",
        "train_peak_rss_ratio_vs_hf_mid",
    }
    text = "\n".join(_mid(result))
    assert "tokens per CPU-second" in text and "train_ratio_vs_hf_padded_mid" in text
