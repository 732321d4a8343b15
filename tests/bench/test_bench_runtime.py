"""The runtime benches' code paths at tiny sizes: real training (tiny Llama on CPU) through
our loop and through HF Trainer + peft, token counting, a worker subprocess, packing.

Each step here covers the whole data set (batch = all rows), so the tokens a step counts
do not depend on the sampler's order: both trainers must count exactly the data's tokens.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.common import run_worker
from bench.packing import measure
from bench.throughput import run_hf_trainer, run_ours

MODEL = "builtin:tiny-llama"


def _args(data: Path) -> dict:
    return {
        "data": str(data),
        "model": MODEL,
        "batch_size": 6,
        "accumulation": 1,
        "sequence_len": 512,
        "warmup": 1,
        "steps": 2,
    }


@pytest.fixture(scope="module")
def data_tokens(tiny_data: Path) -> int:
    """Non-pad tokens in one pass over the data, from our pipeline."""
    from bench.throughput import _config
    from finetune_runtime.data import build_datasets
    from finetune_runtime.model.load import load_tokenizer, resolve_model_source

    config = _config(_args(tiny_data), False, "/tmp/unused")
    tokenizer = load_tokenizer(config, resolve_model_source(MODEL))
    return build_datasets(config, tokenizer).train.num_tokens


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_our_loop_counts_every_real_token_of_the_timed_steps(
    tiny_data: Path, data_tokens: int, packed: bool
):
    result = run_ours(_args(tiny_data), packed=packed)
    assert result["tokens"] == 2 * data_tokens  # two timed steps, each the whole data
    assert result["seconds"] > 0
    assert result["tokens_per_s"] == pytest.approx(result["tokens"] / result["seconds"])
    assert result["flops"]["adapter_params"] > 0 and not result["flops"]["full_finetune"]
    assert 1 <= result["context"] <= 512
    assert result["rss_after_setup_mib"] > 0
    if packed:
        assert result["train_rows"] < 6  # several examples share a row


def test_hf_trainer_baseline_counts_the_same_tokens(tiny_data: Path, data_tokens: int):
    result = run_hf_trainer(_args(tiny_data))
    assert result["tokens"] == 2 * data_tokens
    assert result["train_rows"] == 6
    ours = run_ours(_args(tiny_data), packed=False)
    assert result["flops"] == ours["flops"]  # the same model and adapter
    assert result["context"] == pytest.approx(ours["context"])


def test_matmul_peak_worker_reports_flops_and_its_own_peak_rss():
    result = run_worker(
        "bench.throughput",
        {"variant": "matmul_peak", "matmul_sizes": [32, 64], "best_of": 1, "threads": 1},
    )
    assert result["variant"] == "matmul_peak"
    assert set(result["per_size"]) == {"32", "64"}
    assert result["peak_flops"] == max(result["per_size"].values()) > 0
    assert result["peak_rss_mib"] > 10 and result["threads"] == 1


def test_unknown_variant_fails_loudly():
    from bench.common import WorkerError

    with pytest.raises(WorkerError, match="unknown variant 'nope'"):
        run_worker("bench.throughput", {"variant": "nope"})


def test_packing_measure_on_the_packaged_sample():
    from bench.data import train_config
    from finetune_runtime.config import parse_config
    from finetune_runtime.data import packaged_data_path
    from finetune_runtime.model.load import load_tokenizer, resolve_model_source

    data = packaged_data_path()
    config = parse_config(
        train_config(
            data, "/tmp/x", base_model=MODEL, batch_size=4, accumulation=1,
            sequence_len=256, sample_packing=False,
        )
    )  # fmt: skip
    tokenizer = load_tokenizer(config, resolve_model_source(MODEL))
    row = measure(data, tokenizer, 256, 4, MODEL)
    assert row["examples"] == 156 and row["truncated"] == 0
    assert 0 < row["padded_fixed"] <= row["padded_batch_max"] <= 1
    assert row["packed"] == pytest.approx(row["tokens"] / (row["packed_rows"] * 256))
    assert row["packed_rows"] < row["examples"]
    assert row["packed_vs_padded"] == pytest.approx(row["packed"] / row["padded_batch_max"])
