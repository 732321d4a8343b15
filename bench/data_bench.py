"""Bench 7: preparing data at scale (`finetune preprocess`) and starting from its cache.

On a synthetic Alpaca set (200k rows by default, bench.data.synthetic_rows), each
measured in its own worker process, interleaved round by round:

- prepare: `finetune_runtime.data.prepared.prepare` (read JSONL, format, tokenize,
  mask, split, pack, write the memory-mapped cache) vs. the baseline, a plain
  `datasets.load_dataset("json")` + `Dataset.map(batched=True)` tokenizing the same
  rows rendered with the same Alpaca template by the same tokenizer, with the same
  number of processes. Tokens/s ratio = ours / baseline, median of per-round ratios.
  Wall and CPU time (this process + its workers) and peak RSS (this process, and the
  largest worker) are recorded.
- start: wall time from calling `train` to the end of its first optimizer step, with
  the cache absent (cold: prepares first) and present (warm: maps it). Ratio =
  warm / cold (lower is better), median of per-round ratios; peak RSS of training.
- resident: RSS growth per token after touching every example, for the mapped cache
  and for the in-memory lists `build_datasets` returns (on a subset: per token, the
  figure does not depend on the size).

    python -m bench.run --only data
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import interleave, median, rss_mib, run_worker, worker_main

TOKENIZER_MODEL = "builtin:tiny-llama"
SEQUENCE_LEN = 512


def _config(args: dict[str, Any], **update: Any) -> Any:
    from finetune_runtime.config import parse_config

    raw = {
        "base_model": TOKENIZER_MODEL,
        "datasets": [{"path": args["data"], "format": "alpaca"}],
        "dataset_prepared_path": args["prepared"],
        "dataset_processes": args["processes"],
        "training": {
            "sequence_len": SEQUENCE_LEN,
            "sample_packing": True,
            "batch_size": 4,
            "max_steps": 1,
            "precision": "fp32",
            "auto_resume": False,
        },
        "output_dir": args["output"],
        **update,
    }
    return parse_config(raw)


def _tokenizer() -> Any:
    from transformers import AutoTokenizer

    from finetune_runtime.model.tiny import resolve_builtin

    return AutoTokenizer.from_pretrained(resolve_builtin(TOKENIZER_MODEL))


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _peaks() -> dict[str, float]:
    return {
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_worker_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


# --------------------------------------------------------------------------- workers


def _prepare(args: dict[str, Any]) -> dict[str, Any]:
    from finetune_runtime.data.prepared import prepare

    shutil.rmtree(args["prepared"], ignore_errors=True)
    config, tokenizer = _config(args), _tokenizer()
    wall, cpu = time.perf_counter(), _cpu_seconds()
    done = prepare(config, tokenizer)
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    from finetune_runtime.data.cache import read_meta

    stats = read_meta(done.folder)["stats"]
    tokens = stats["train_tokens"] + stats["eval_tokens"]
    size = sum(f.stat().st_size for f in done.folder.iterdir())
    return {"seconds": wall, "cpu_seconds": cpu, "tokens": tokens, "cache_bytes": size, **_peaks()}


def _datasets_map(args: dict[str, Any]) -> dict[str, Any]:
    import datasets

    from finetune_runtime.data.formats import (
        ALPACA_INPUT,
        ALPACA_NO_INPUT,
        ALPACA_PREAMBLE_INPUT,
        ALPACA_PREAMBLE_NO_INPUT,
    )

    datasets.disable_progress_bars()
    tokenizer = _tokenizer()
    eos = tokenizer.eos_token

    def render(instruction: str, given: str, output: str) -> str:
        if given:
            prompt = ALPACA_INPUT.format(
                preamble=ALPACA_PREAMBLE_INPUT, instruction=instruction, input=given
            )
        else:
            prompt = ALPACA_NO_INPUT.format(
                preamble=ALPACA_PREAMBLE_NO_INPUT, instruction=instruction
            )
        return prompt + output + eos

    def tokenize(batch: dict[str, list[str]]) -> dict[str, Any]:
        texts = [
            render(i, g, o)
            for i, g, o in zip(batch["instruction"], batch["input"], batch["output"], strict=True)
        ]
        return tokenizer(texts)

    wall, cpu = time.perf_counter(), _cpu_seconds()
    rows = datasets.load_dataset("json", data_files=args["data"], split="train")
    out = rows.map(
        tokenize, batched=True, num_proc=args["processes"], remove_columns=rows.column_names
    )
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    import pyarrow.compute as pc

    tokens = int(pc.sum(pc.list_value_length(out.data.column("input_ids"))).as_py())
    return {"seconds": wall, "cpu_seconds": cpu, "tokens": tokens, **_peaks()}


def _start(args: dict[str, Any]) -> dict[str, Any]:
    from finetune_runtime.train.loop import TrainOptions, train

    if args["variant"] == "start_cold":
        shutil.rmtree(args["prepared"], ignore_errors=True)
    shutil.rmtree(args["output"], ignore_errors=True)
    config = _config(args)
    wall, cpu = time.perf_counter(), _cpu_seconds()
    train(config, TrainOptions(resume=False, serve_progress=False, progress_bar=False))
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    return {"seconds": wall, "cpu_seconds": cpu, **_peaks()}


def _resident(args: dict[str, Any]) -> dict[str, Any]:
    config, tokenizer = _config(args), _tokenizer()
    if args["variant"] == "resident_mapped":
        from finetune_runtime.data.prepared import prepare

        folder = prepare(config, tokenizer).folder  # reuses the start rounds' cache
        from finetune_runtime.data.prepared import open_prepared

        before = rss_mib()
        bundle = open_prepared(folder, config)
        for i in range(len(bundle.train)):  # one epoch touches every page
            bundle.train[i]
    else:
        from finetune_runtime.data import build_datasets

        before = rss_mib()
        bundle = build_datasets(config, tokenizer, processes=1)
    grown = (rss_mib() - before) * 1024 * 1024
    tokens = bundle.train.num_tokens
    return {"bytes_per_token": grown / tokens, "tokens": tokens, **_peaks()}


def worker(args: dict[str, Any]) -> dict[str, Any]:
    variant = args["variant"]
    if variant == "prepare":
        return _prepare(args)
    if variant == "datasets_map":
        return _datasets_map(args)
    if variant.startswith("start_"):
        return _start(args)
    return _resident(args)


# --------------------------------------------------------------------------- driver


def run(rows: int, repeats: int, tmp: Path, processes: int | None = None) -> dict[str, Any]:
    """Every round in worker processes; raw runs and the summary."""
    from bench.data import synthetic_rows, write_jsonl

    procs = processes or len(os.sched_getaffinity(0))
    data = write_jsonl(tmp / "data-bench.jsonl", synthetic_rows(rows, seed=2))
    subset = write_jsonl(tmp / "data-bench-subset.jsonl", synthetic_rows(min(rows, 20000), seed=2))
    base = {
        "data": str(data),
        "prepared": str(tmp / "prepared"),
        "output": str(tmp / "out"),
        "processes": procs,
    }
    env = {"HF_DATASETS_CACHE": str(tmp / "hf-datasets"), "HF_HUB_OFFLINE": "1"}
    runs: list[dict[str, Any]] = []

    def one(round_: int, variant: str, **extra: Any) -> None:
        if variant == "datasets_map":
            shutil.rmtree(env["HF_DATASETS_CACHE"], ignore_errors=True)  # cold, like ours
        result = run_worker(
            "bench.data_bench", {**base, **extra, "variant": variant}, env=env, timeout=3600
        )
        runs.append({"round": round_, "variant": variant, **result})
        print(f"  data round {round_} {variant}: {result}", file=sys.stderr, flush=True)

    for round_, variant in interleave(("datasets_map", "prepare"), repeats):
        one(round_, variant)
    for round_, variant in interleave(("start_cold", "start_warm"), repeats):
        one(round_, variant)  # round 0 runs cold first: every warm run finds a cache
    one(0, "resident_mapped")
    one(0, "resident_lists", data=str(subset), prepared=str(tmp / "prepared-subset"))
    return {"rows": rows, "processes": procs, "runs": runs, "summary": summarize(runs)}


def _paired(runs: list[dict[str, Any]], a: str, b: str, key: str) -> list[float]:
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for r in runs:
        by_round.setdefault(r["round"], {})[r["variant"]] = r
    return [rnd[a][key] / rnd[b][key] for rnd in by_round.values() if a in rnd and b in rnd]


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    for r in runs:
        if "tokens" in r and "seconds" in r:
            r["tokens_per_s"] = r["tokens"] / r["seconds"]
            r["tokens_per_cpu_s"] = r["tokens"] / r["cpu_seconds"]

    def med(variant: str, key: str) -> float | None:
        values = [r[key] for r in runs if r["variant"] == variant and key in r]
        return median(values) if values else None

    tps = _paired(runs, "prepare", "datasets_map", "tokens_per_s")
    per_cpu = _paired(runs, "prepare", "datasets_map", "tokens_per_cpu_s")
    start = _paired(runs, "start_warm", "start_cold", "seconds")
    variants = sorted({r["variant"] for r in runs})
    return {
        "prepare_ratio": median(tps) if tps else None,
        "prepare_ratio_runs": [round(x, 3) for x in tps],
        "prepare_cpu_ratio": median(per_cpu) if per_cpu else None,
        "prepare_cpu_ratio_runs": [round(x, 3) for x in per_cpu],
        "start_ratio": median(start) if start else None,
        "start_ratio_runs": [round(x, 3) for x in start],
        "variants": {
            v: {
                k: med(v, k)
                for k in (
                    "seconds",
                    "cpu_seconds",
                    "tokens",
                    "tokens_per_s",
                    "tokens_per_cpu_s",
                    "peak_rss_mib",
                    "peak_worker_rss_mib",
                    "cache_bytes",
                    "bytes_per_token",
                )
                if med(v, k) is not None
            }
            for v in variants
        },
    }


def headline(summary: dict[str, Any]) -> dict[str, float]:
    v = summary["variants"]
    keys = {
        "data_prepare_tokens_per_s_ratio_vs_datasets_map": summary["prepare_ratio"],
        "data_resident_bytes_per_token": v.get("resident_mapped", {}).get("bytes_per_token"),
        "data_warm_start_ratio_vs_cold": summary["start_ratio"],
    }
    return {k: round(x, 3) for k, x in keys.items() if x is not None}


def render(data: dict[str, Any]) -> list[str]:
    s = data["summary"]
    v = s["variants"]

    def f(variant: str, key: str, digits: int = 1) -> str:
        x = v.get(variant, {}).get(key)
        return "—" if x is None else f"{x:,.{digits}f}"

    out = [
        "## 7. Data preparation at scale",
        "",
        f"Synthetic Alpaca set of {data['rows']:,} rows, tokenizer of `{TOKENIZER_MODEL}`, "
        f"sequence_len {SEQUENCE_LEN} with packing, {data['processes']} processes on both "
        "sides; each run in a fresh worker process, variants interleaved per round. Ratios "
        "are medians of per-round ratios.",
        "",
        "| run | wall s | CPU s | tokens | tokens/s | peak RSS MiB | largest worker RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    names = {
        "datasets_map": "baseline: `datasets` load_dataset(json) + map(batched=True)",
        "prepare": "ours: `finetune preprocess` (tokenize, mask, split, pack, write)",
        "start_cold": "train to first step, no cache (prepares first)",
        "start_warm": "train to first step, warm cache",
    }
    for name, label in names.items():
        out.append(
            f"| {label} | {f(name, 'seconds')} | {f(name, 'cpu_seconds')} | "
            f"{f(name, 'tokens', 0)} | {f(name, 'tokens_per_s', 0)} | "
            f"{f(name, 'peak_rss_mib')} | {f(name, 'peak_worker_rss_mib')} |"
        )
    ratio = s["prepare_ratio"]
    start = s["start_ratio"]
    cache = v.get("prepare", {}).get("cache_bytes")
    tokens = v.get("prepare", {}).get("tokens")
    out += [
        "",
        f"- prepare tokens/s, ours ÷ baseline: **{ratio:.2f}×** (runs {s['prepare_ratio_runs']})"
        if ratio is not None
        else "- prepare ratio: not measured",
        f"- prepare tokens per CPU-second, ours ÷ baseline: {s['prepare_cpu_ratio']:.2f}× "
        f"(runs {s['prepare_cpu_ratio_runs']}; CPU time of the process and its workers)"
        if s.get("prepare_cpu_ratio") is not None
        else "- prepare CPU ratio: not measured",
        f"- time to the first step, warm ÷ cold: **{start:.3f}** (runs {s['start_ratio_runs']})"
        if start is not None
        else "- warm/cold: not measured",
        f"- resident bytes per token after touching every example: mapped cache "
        f"**{f('resident_mapped', 'bytes_per_token', 2)}**, in-memory lists "
        f"(`build_datasets`) {f('resident_lists', 'bytes_per_token', 1)}",
    ]
    if cache and tokens:
        out.append(f"- cache on disk: {cache / 2**20:,.1f} MiB, {cache / tokens:.2f} bytes/token")
    return out


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:], worker))
