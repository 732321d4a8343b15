"""Pure parts of the benches: interleaving, percentiles, padding and FLOP arithmetic, the
emulator-patch helpers, and the report rendered from a results dict."""

from __future__ import annotations

import math

import pytest

from bench.common import interleave, percentile
from bench.data import synthetic_rows
from bench.flops import FlopModel, effective_context, flop_model
from bench.packing import padded_efficiency
from bench.report import render
from bench.run import flops_table, summarize_runtime
from bench.throughput import _segment_lengths, _window


def test_interleave_runs_every_variant_once_per_round_rotating_the_first():
    order = interleave(["a", "b", "c"], 4)
    assert [v for r, v in order if r == 0] == ["a", "b", "c"]
    assert [v for r, v in order if r == 1] == ["b", "c", "a"]
    assert [v for r, v in order if r == 3] == ["a", "b", "c"]
    assert len(order) == 12
    assert {v for r, v in order if r == 2} == {"a", "b", "c"}


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_padded_efficiency_counts_padding_to_the_batch_max():
    assert padded_efficiency([4, 4, 4, 4], batch_size=2) == 1.0
    # one batch [1, 3]: 4 real tokens of 6
    assert padded_efficiency([1, 3], batch_size=2) == pytest.approx(4 / 6)
    # batch size 1 never pads
    assert padded_efficiency([1, 7, 3], batch_size=1) == 1.0


def test_effective_context_is_token_weighted():
    assert effective_context([10]) == 10
    assert effective_context([10, 30]) == pytest.approx((100 + 900) / 40)
    assert effective_context([]) == 0.0


def test_flop_formula():
    lora = FlopModel(matmul_params=1000, adapter_params=10, layers=2, hidden=8)
    assert lora.per_token(5) == 4 * 1000 + 6 * 10 + 12 * 2 * 8 * 5
    full = FlopModel(matmul_params=1000, adapter_params=0, layers=2, hidden=8, full_finetune=True)
    assert full.per_token(5) == 6 * 1000 + 12 * 2 * 8 * 5


def test_flop_model_counts_frozen_matmuls_and_lora_weights():
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    bare = LlamaForCausalLM(config).requires_grad_(True)  # a full fine-tune
    linear = sum(m.weight.numel() for m in bare.modules() if isinstance(m, torch.nn.Linear))
    full = flop_model(bare)
    assert full.full_finetune and full.adapter_params == 0 and full.matmul_params == linear

    wrapped = get_peft_model(
        LlamaForCausalLM(config),
        LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    counted = flop_model(wrapped)
    # q: 16x16, v: 16x8 (one KV head of 8); LoRA A is r x in, B is out x r
    per_layer = (2 * 16 + 16 * 2) + (2 * 16 + 8 * 2)
    assert counted.adapter_params == 2 * per_layer
    assert counted.matmul_params == linear  # every Linear, LM head included, embedding not
    assert (counted.layers, counted.hidden, counted.full_finetune) == (2, 16, False)


def test_window_times_steps_after_warmup():
    marks = [(1.0, 10), (2.0, 30), (4.0, 70), (5.0, 90)]
    result = _window(marks, warmup=1, steps=2)
    # from the end of step 1 (t=1, 10 tokens) to the end of step 3 (t=4, 70 tokens)
    assert (result["seconds"], result["tokens"], result["tokens_per_s"]) == (3.0, 60, 20.0)
    assert result["step_seconds"] == [1.0, 2.0] and result["step_tokens"] == [20, 40]
    assert result["step_median_tokens_per_s"] == 20.0  # rates 20 and 20
    with pytest.raises(RuntimeError, match="only 4 steps"):
        _window(marks, warmup=2, steps=3)
    with pytest.raises(ValueError, match="warmup"):
        _window(marks, warmup=0, steps=2)


def test_segment_lengths_of_a_packed_row():
    assert _segment_lengths({"position_ids": [0, 1, 2, 0, 1, 0]}) == [3, 2, 1]


def test_synthetic_rows_are_deterministic_and_long_tailed():
    rows = synthetic_rows(300, seed=5)
    assert rows == synthetic_rows(300, seed=5)
    assert rows != synthetic_rows(300, seed=6)
    lengths = sorted(len(r["output"].split()) for r in rows)
    median = lengths[len(lengths) // 2]
    assert lengths[-1] > 3 * median  # a long tail, so padding matters
    assert all(set(r) == {"instruction", "input", "output"} for r in rows)


def _fake_results() -> dict:
    flops = {"matmul_params": 1000, "adapter_params": 10, "layers": 2, "hidden": 8}
    runs = []
    for round_, (hf, ours, packed) in enumerate([(100.0, 110.0, 150.0), (90.0, 108.0, 130.0)]):
        for variant, tps, rss in (
            ("hf_trainer", hf, 500.0),
            ("ours", ours, 450.0),
            ("ours_packed", packed, 460.0),
        ):
            runs.append(
                {
                    "round": round_,
                    "variant": variant,
                    "tokens_per_s": tps,
                    "step_median_tokens_per_s": tps,
                    "tokens": tps * 10,
                    # packed runs see other batches; padded ones the same batches
                    "step_tokens": [5, 7] if variant == "ours_packed" else [3, 4],
                    "step_seconds": [1.0, 2.0] if variant == "hf_trainer" else [0.5, 2.5],
                    "peak_rss_mib": rss,
                    "rss_after_setup_mib": 400.0,
                    "flops": {**flops, "full_finetune": False},
                    "context": 5.0,
                    "train_rows": 10,
                }
            )
        runs.append(
            {"round": round_, "variant": "matmul_peak", "peak_flops": 1e9, "per_size": {"8": 1e9}}
        )
    raw = {"args": {"steps": 10, "model": "m", "sequence_len": 64, "batch_size": 2,
                    "accumulation": 1, "warmup": 1}, "runs": runs}  # fmt: skip
    return raw


def test_summary_uses_paired_ratios_and_renders():
    raw = _fake_results()
    summary = summarize_runtime(raw)
    ours = summary["variants"]["ours"]
    assert ours["ratio_vs_baseline"] == pytest.approx((110 / 100 + 108 / 90) / 2)
    assert ours["rss_ratio_vs_baseline"] == pytest.approx(0.9)
    assert summary["variants"]["hf_trainer"]["ratio_vs_baseline"] == 1.0
    # step ratios 1/0.5 and 2/2.5 in each of two rounds: median of [2, 0.8, 2, 0.8]
    assert ours["paired_step_ratio"] == pytest.approx(1.4) and ours["paired_steps"] == 4
    assert summary["variants"]["ours_packed"]["paired_step_ratio"] is None
    assert summary["peak_flops"] == 1e9
    table = flops_table(summary)
    per_token = 4 * 1000 + 6 * 10 + 12 * 2 * 8 * 5
    assert table["rows"]["ours"]["mfu"] == pytest.approx(109 * per_token / 1e9)

    results = {
        "command": "python -m bench.run --quick",
        "quick": True,
        "machine": {
            "date": "d",
            "nproc": 2,
            "cpu": "cpu",
            "platform": "p",
            "python": "3.11",
            "torch": "2",
            "torch_threads": 1,
        },  # fmt: skip
        "sizes": {"repeats": 2, "synthetic_rows": 10, "best_of": 1},
        "threads": 1,
        "errors": {"operator": "Traceback: boom"},
        "throughput": {**summary, "raw": raw, "load": {"min": 1.0, "median": 2.0, "max": 3.0}},
        "flops": table,
    }
    text = render(results)
    assert "`python -m bench.run --quick`" in text
    assert "1.15×" in text  # ours vs baseline, median of the paired ratios
    assert "1.40× (4 steps)" in text and "– (other batches)" in text
    assert "1.00 / 2.00 / 3.00" in text  # load min / median / max
    assert "4·N_mm + 6·N_ad + 12·L·d·T" in text
    assert "## Failed benches" in text and "boom" in text


def test_data_bench_pairs_rounds_and_writes_its_headline_keys(tmp_path):
    from bench.common import merge_headline
    from bench.data_bench import headline, render, summarize

    def run(round_: int, variant: str, **values: float) -> dict:
        return {"round": round_, "variant": variant, **values}

    runs = [
        run(0, "datasets_map", seconds=10.0, cpu_seconds=20.0, tokens=1000),
        run(0, "prepare", seconds=5.0, cpu_seconds=8.0, tokens=1000),
        run(1, "prepare", seconds=8.0, cpu_seconds=8.0, tokens=1000),
        run(1, "datasets_map", seconds=12.0, cpu_seconds=20.0, tokens=1000),
        run(0, "start_cold", seconds=40.0, cpu_seconds=1.0),
        run(0, "start_warm", seconds=10.0, cpu_seconds=1.0),
        run(1, "start_warm", seconds=12.0, cpu_seconds=1.0),
        run(1, "start_cold", seconds=30.0, cpu_seconds=1.0),
        run(0, "resident_mapped", bytes_per_token=5.25, tokens=1000),
    ]
    summary = summarize(runs)
    assert summary["prepare_ratio"] == pytest.approx((2.0 + 1.5) / 2)  # per-round ratios
    assert summary["prepare_cpu_ratio"] == pytest.approx(2.5)
    assert summary["start_ratio"] == pytest.approx((0.25 + 0.4) / 2)
    keys = headline(summary)
    assert keys == {
        "data_prepare_tokens_per_s_ratio_vs_datasets_map": 1.75,
        "data_resident_bytes_per_token": 5.25,
        "data_warm_start_ratio_vs_cold": 0.325,
    }
    path = tmp_path / "headline.json"
    path.write_text('{"other_bench_key": 3}')
    assert merge_headline(keys, path) == {"other_bench_key": 3, **keys}  # others' keys stay
    text = "\n".join(render({"rows": 1000, "processes": 2, "summary": summary}))
    assert "**1.75×**" in text and "**0.325**" in text and "**5.25**" in text
