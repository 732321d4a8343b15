"""`python -m bench.run`: every benchmark, interleaved and side by side, into RESULTS.md.

    python -m bench.run                   # the full run (~15 min on 2 cores), writes bench/
    python -m bench.run --quick           # smoke sizes, prints the report
    python -m bench.run --only packing,flops --out /tmp/b

Benches: throughput (1), packing (2), flops (3, shares the throughput rounds),
operator (4 and 5), serve (`finetune serve` vs sequential generate), data (7:
bench/data_bench.py), axolotl (against axolotl itself; needs `make axolotl`). Results go to
OUT/results.json and OUT/RESULTS.md; headline keys are merged into OUT/headline.json; a run
of some benches (--only) keeps the other benches' last results from OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import LoadLog, interleave, machine, median, run_worker

BENCHES = ("throughput", "packing", "flops", "mid", "operator", "serve", "data", "axolotl")


@dataclass
class Sizes:
    model: str = "builtin:small-llama"
    synthetic_rows: int = 400
    sequence_len: int = 512
    batch_size: int = 4
    accumulation: int = 2
    warmup: int = 3
    steps: int = 12
    repeats: int = 4
    matmul_sizes: tuple[int, ...] = (256, 512, 1024, 2048)
    best_of: int = 5
    packing_rows: int = 1000
    packing_lens: tuple[int, ...] = (128, 256, 512, 1024, 2048)
    latency_scales: tuple[int, ...] = (100, 500)  # the first is the headline's
    memory_jobs: int = 1000  # also a latency row
    resync: float = 5.0
    op_timeout: float = 900.0
    quick: bool = False
    serve_requests: int = 64
    serve_max_tokens: int = 32
    serve_repeats: int = 3
    data_rows: int = 200_000
    data_repeats: int = 3
    mid_model: str = "builtin:mid-llama"
    mid_sequence_len: int = 512
    mid_batch_size: int = 1  # packed rows per micro-batch (HF: as many examples as they hold)
    mid_accumulation: int = 2
    mid_warmup: int = 1
    mid_steps: int = 3
    mid_repeats: int = 3
    extra: dict[str, Any] = field(default_factory=dict)


QUICK = Sizes(
    model="builtin:tiny-llama",
    synthetic_rows=24,
    sequence_len=128,
    batch_size=2,
    accumulation=1,
    warmup=1,
    steps=2,
    repeats=1,
    matmul_sizes=(64, 128),
    best_of=1,
    packing_rows=40,
    packing_lens=(128, 256),
    latency_scales=(2,),
    memory_jobs=3,
    op_timeout=180.0,
    quick=True,
    serve_requests=8,
    serve_max_tokens=4,
    serve_repeats=1,
    data_rows=2000,
    data_repeats=1,
    mid_model="builtin:tiny-llama",
    mid_sequence_len=128,
    mid_steps=1,
    mid_repeats=1,
)


def runtime_rounds(
    sizes: Sizes, data: Path, threads: int, variants: tuple[str, ...], load: LoadLog
) -> dict[str, Any]:
    """Worker processes in rotated ABC rounds; raw results per round."""
    args = {
        "data": str(data),
        "model": sizes.model,
        "batch_size": sizes.batch_size,
        "accumulation": sizes.accumulation,
        "sequence_len": sizes.sequence_len,
        "warmup": sizes.warmup,
        "steps": sizes.steps,
        "threads": threads,
        "matmul_sizes": list(sizes.matmul_sizes),
        "best_of": sizes.best_of,
    }
    runs: list[dict[str, Any]] = []
    for round_, variant in interleave(variants, sizes.repeats):
        load.sample()
        result = run_worker("bench.throughput", {**args, "variant": variant})
        load.sample()
        runs.append({"round": round_, **result})
        print(f"  round {round_} {variant}: {_brief(result)}", file=sys.stderr, flush=True)
    return {"args": args, "runs": runs}


def _brief(result: dict[str, Any]) -> str:
    if "tokens_per_s" in result:
        return f"{result['tokens_per_s']:.0f} tokens/s, peak RSS {result['peak_rss_mib']:.0f} MiB"
    return f"peak {result.get('peak_flops', 0) / 1e9:.1f} GFLOP/s"


def paired_step_ratios(baseline: dict[str, Any], other: dict[str, Any]) -> list[float]:
    """Per optimizer step, baseline step time / other step time, where both trained on
    the very same batches (equal token counts step by step: same data, same order).

    The two runs of a round are minutes apart, so this still sees load changes between
    them, but not the mix of long and short batches. Empty when the batches differ
    (packing)."""
    if baseline.get("step_tokens") != other.get("step_tokens"):
        return []
    return [b / o for b, o in zip(baseline["step_seconds"], other["step_seconds"], strict=True)]


def summarize_runtime(raw: dict[str, Any], baseline: str = "hf_trainer") -> dict[str, Any]:
    """Medians per variant and per-round paired ratios against the baseline."""
    runs = raw["runs"]
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for run in runs:
        by_round.setdefault(run["round"], {})[run["variant"]] = run
    variants = sorted({r["variant"] for r in runs if "tokens_per_s" in r})
    table = {}
    for v in variants:
        mine = [r for r in runs if r["variant"] == v]
        ratios = [
            rnd[v]["tokens_per_s"] / rnd[baseline]["tokens_per_s"]
            for rnd in by_round.values()
            if v in rnd and baseline in rnd
        ]
        rss_ratios = [
            rnd[v]["peak_rss_mib"] / rnd[baseline]["peak_rss_mib"]
            for rnd in by_round.values()
            if v in rnd and baseline in rnd
        ]
        step_ratios = [
            ratio
            for rnd in by_round.values()
            if v in rnd and baseline in rnd
            for ratio in paired_step_ratios(rnd[baseline], rnd[v])
        ]
        table[v] = {
            "tokens_per_s": median(r["tokens_per_s"] for r in mine),
            "step_median_tokens_per_s": median(r["step_median_tokens_per_s"] for r in mine),
            "paired_step_ratio": median(step_ratios) if step_ratios else None,
            "paired_steps": len(step_ratios),
            "tokens_per_s_runs": [round(r["tokens_per_s"], 1) for r in mine],
            "ratio_vs_baseline": median(ratios) if ratios else None,
            "ratio_runs": [round(x, 3) for x in ratios],
            "tokens_per_step": median(r["tokens"] / raw["args"]["steps"] for r in mine),
            "peak_rss_mib": median(r["peak_rss_mib"] for r in mine),
            "rss_ratio_vs_baseline": median(rss_ratios) if rss_ratios else None,
            "rss_after_setup_mib": median(r["rss_after_setup_mib"] for r in mine),
            "flops": mine[0]["flops"],
            "context": mine[0]["context"],
            "train_rows": mine[0]["train_rows"],
        }
    peaks = [r["peak_flops"] for r in runs if r["variant"] == "matmul_peak"]
    per_size: dict[str, list[float]] = {}
    for r in runs:
        for n, value in (r.get("per_size") or {}).items():
            per_size.setdefault(n, []).append(value)
    return {
        "baseline": baseline,
        "variants": table,
        "peak_flops": median(peaks) if peaks else None,
        "peak_runs": peaks,
        "peak_per_size": {n: median(v) for n, v in per_size.items()},
    }


def flops_table(summary: dict[str, Any]) -> dict[str, Any]:
    from bench.flops import FlopModel

    peak = summary["peak_flops"]
    rows = {}
    for v, row in summary["variants"].items():
        model = FlopModel(**row["flops"])
        per_token = model.per_token(row["context"])
        achieved = row["tokens_per_s"] * per_token
        rows[v] = {
            "flops_per_token": per_token,
            "achieved_flops": achieved,
            "mfu": achieved / peak if peak else None,
        }
    return {"peak_flops": peak, "rows": rows}


def run_operator(sizes: Sizes, load: LoadLog) -> dict[str, Any]:
    """Ours and Kubeflow's training-operator on one real control plane, side by side."""

    from bench.common import merge_headline
    from bench.operator_peer import PEER_NAME, kube_version, run_scale

    scales = {}
    for jobs in (*sizes.latency_scales, sizes.memory_jobs):
        load.sample()
        print(f"  operator vs peer: {jobs} jobs x 2 workers", file=sys.stderr, flush=True)
        scales[jobs] = run_scale(jobs, resync=sizes.resync, timeout=sizes.op_timeout)
        load.sample()
    plane = f"kube-apiserver {kube_version()}"
    result = {"control_plane": plane, "peer": PEER_NAME, "scales": scales}
    latency = scales[sizes.latency_scales[0]] if sizes.latency_scales else None
    memory = scales[sizes.memory_jobs]
    if latency is not None and not sizes.quick:
        merge_headline(
            {
                "operator_control_plane": plane,
                "operator_peer": PEER_NAME,
                "operator_p99_s_100_jobs": latency["ours"]["running"]["p99_s"],
                "operator_peer_p99_s_100_jobs": latency["peer"]["running"]["p99_s"],
                "operator_requests_per_job": memory["ours"]["requests_per_job"],
                "operator_peer_requests_per_job": memory["peer"]["requests_per_job"],
                "operator_kib_per_job_1000": memory["ours"]["kib_per_job"],
                "operator_peer_kib_per_job_1000": memory["peer"]["kib_per_job"],
            }
        )
    return result


def run_serve(sizes: Sizes, threads: int, results: dict[str, Any]) -> None:
    from bench.serve_bench import summarize

    load = LoadLog()
    print("serving: finetune serve vs sequential generate", file=sys.stderr, flush=True)
    args = {
        "model": sizes.model,
        "requests": sizes.serve_requests,
        "max_tokens": sizes.serve_max_tokens,
        "repeats": sizes.serve_repeats,
        "threads": threads,
    }
    try:
        load.sample()
        raw = run_worker("bench.serve_bench", args, timeout=3600)
        load.sample()
        results["serve"] = {"args": args, **summarize(raw), "raw": raw, "load": load.summary()}
    except Exception:  # noqa: BLE001 - one failed bench must not lose the others
        results["errors"]["serve"] = traceback.format_exc()


def merge_headline(path: Path, keys: dict[str, float]) -> None:
    """bench/headline.json is one flat map shared by every bench: update ours, keep the rest."""
    current = json.loads(path.read_text()) if path.is_file() else {}
    current.update(keys)
    path.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")


def _run_mid(sizes: Sizes, results: dict[str, Any], data: Path, write_headline: bool) -> None:
    """Bench 6 (bench.mid): ours vs HF padded and HF flattened on the mid-size model."""
    from bench.common import merge_headline
    from bench.mid import run_rounds

    print("mid model: ours vs HF Trainer padded / flattened", file=sys.stderr, flush=True)
    args = {
        "data": str(data),
        "model": sizes.mid_model,
        "batch_size": sizes.mid_batch_size,
        "accumulation": sizes.mid_accumulation,
        "sequence_len": sizes.mid_sequence_len,
        "warmup": sizes.mid_warmup,
        "steps": sizes.mid_steps,
        "threads": 1,
    }
    try:
        results["mid"] = run_rounds(args, sizes.mid_repeats, LoadLog())
        if write_headline:
            merge_headline(results["mid"]["headline"])
    except Exception:  # noqa: BLE001 - one failed bench must not lose the others
        results["errors"]["mid"] = traceback.format_exc()


def run_vs_axolotl(quick: bool) -> dict[str, Any]:
    from bench.vs_axolotl import speed, venv

    reason = venv.missing_reason()
    if reason is not None:
        raise RuntimeError(reason)
    load = LoadLog()
    with tempfile.TemporaryDirectory(prefix="bench-axolotl-") as tmp:
        result = speed.run(speed.QUICK if quick else speed.SpeedSizes(), Path(tmp), load)
    return result | {"load": load.summary(), "versions": venv.installed_versions()}


def keep_previous(results: dict[str, Any], previous: Path, only: set[str]) -> None:
    """Carry the last results of benches this run skipped, so RESULTS.md keeps them."""
    if results.get("quick") or not previous.is_file():
        return
    old = json.loads(previous.read_text())
    carried = [n for n in BENCHES if n not in only and n in old and n not in results]
    for name in carried:
        results[name] = old[name]
    if carried:
        when = old.get("carried_from") or {
            "command": old.get("command"),
            "date": old.get("machine", {}).get("date"),
        }
        results["carried_from"] = when | {"benches": carried}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes (seconds)")
    parser.add_argument(
        "--only", default=",".join(BENCHES), help="comma list of " + "|".join(BENCHES)
    )
    parser.add_argument("--out", type=Path, help="directory for results.json and RESULTS.md")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per worker (default 1: on a shared 2-core box, OpenMP threads that "
        "lose their core to another process stall each other and swamp the signal)",
    )
    parser.add_argument("--repeats", type=int, help="rounds of the interleaved runtime benches")
    parser.add_argument("--data-repeats", type=int, help="rounds of the data bench (default 3)")
    args = parser.parse_args(argv)
    only = {b.strip() for b in args.only.split(",") if b.strip()}
    unknown = only - set(BENCHES)
    if unknown:
        parser.error(f"unknown bench(es) {', '.join(sorted(unknown))}; choose from {BENCHES}")
    sizes = QUICK if args.quick else Sizes()
    if args.repeats:
        sizes.repeats = args.repeats
    if args.data_repeats:
        sizes.data_repeats = args.data_repeats
    out = args.out if args.out is not None else (None if args.quick else Path(__file__).parent)

    command = "python -m bench.run " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    results: dict[str, Any] = {
        "command": command.strip(),
        "quick": args.quick,
        "machine": machine(),
        "sizes": {k: v for k, v in sizes.__dict__.items() if k != "extra"},
        "threads": args.threads,
        "errors": {},
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        from bench.data import synthetic_rows, write_jsonl

        synthetic = write_jsonl(Path(tmp) / "synthetic.jsonl", synthetic_rows(sizes.synthetic_rows))

        if only & {"throughput", "flops"}:
            variants = ("matmul_peak",) if "flops" in only else ()
            variants = ("hf_trainer", "ours", "ours_packed", *variants)
            load = LoadLog()
            print("runtime: throughput / memory / FLOPs rounds", file=sys.stderr, flush=True)
            try:
                raw = runtime_rounds(sizes, synthetic, args.threads, variants, load)
                summary = summarize_runtime(raw)
                results["throughput"] = {**summary, "raw": raw, "load": load.summary()}
                if "flops" in only:
                    results["flops"] = flops_table(summary)
            except Exception:  # noqa: BLE001 - one failed bench must not lose the others
                results["errors"]["throughput"] = traceback.format_exc()
        if "packing" in only:
            from bench.packing import run as run_packing
            from finetune_runtime.data import packaged_data_path

            load = LoadLog()
            load.sample()
            print("packing efficiency", file=sys.stderr, flush=True)
            try:
                packing_data = write_jsonl(
                    Path(tmp) / "packing.jsonl", synthetic_rows(sizes.packing_rows, seed=1)
                )
                results["packing"] = run_packing(
                    {"alpaca_sample": packaged_data_path(), "synthetic": packing_data},
                    list(sizes.packing_lens),
                    sizes.batch_size,
                    sizes.model,
                )
                load.sample()
                results["packing"]["load"] = load.summary()
            except Exception:  # noqa: BLE001
                results["errors"]["packing"] = traceback.format_exc()
        if "data" in only:
            from bench import data_bench

            load = LoadLog()
            load.sample()
            print("data: prepare vs datasets.map, warm vs cold start", file=sys.stderr, flush=True)
            try:
                results["data"] = data_bench.run(sizes.data_rows, sizes.data_repeats, Path(tmp))
                load.sample()
                results["data"]["load"] = load.summary()
            except Exception:  # noqa: BLE001
                results["errors"]["data"] = traceback.format_exc()
        if "mid" in only:
            _run_mid(sizes, results, synthetic, write_headline=out is not None and not args.quick)
    if "operator" in only:
        load = LoadLog()
        print("operator: latency and memory", file=sys.stderr, flush=True)
        try:
            results["operator"] = run_operator(sizes, load)
            results["operator"]["load"] = load.summary()
        except Exception:  # noqa: BLE001
            results["errors"]["operator"] = traceback.format_exc()
    if "serve" in only:
        run_serve(sizes, args.threads, results)
    if "axolotl" in only:
        print("axolotl: side by side on the mid-size model", file=sys.stderr, flush=True)
        try:
            results["axolotl"] = run_vs_axolotl(args.quick)
        except Exception:  # noqa: BLE001
            results["errors"]["axolotl"] = traceback.format_exc()
    results["total_seconds"] = time.monotonic() - started
    if out is not None:
        keep_previous(results, out / "results.json", only)

    from bench.report import render

    markdown = render(results)
    if out is not None and out.resolve() != Path(__file__).resolve().parent:
        docs = os.path.relpath(Path(__file__).resolve().parents[1] / "docs", out.resolve())
        markdown = markdown.replace("](../docs/", f"]({docs}/")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        (out / "RESULTS.md").write_text(markdown)
        if "data" in results and not args.quick:
            from bench.common import merge_headline
            from bench.data_bench import headline

            merge_headline(headline(results["data"]["summary"]), out / "headline.json")
        if "axolotl" in results and "axolotl" in only:
            from bench.common import merge_headline

            merge_headline(results["axolotl"]["headline"], out / "headline.json")
        print(f"wrote {out / 'RESULTS.md'} and {out / 'results.json'}", file=sys.stderr)
    else:
        print(markdown)
    if out is not None and "serve" in results:
        from bench.serve_bench import headline

        merge_headline(out / "headline.json", headline(results["serve"]))
    for name, error in results["errors"].items():
        print(f"bench {name} failed:\n{error}", file=sys.stderr)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
