"""`python -m bench.run`: every benchmark, interleaved and side by side, into RESULTS.md.

    python -m bench.run                   # the full run (~15 min on 2 cores), writes bench/
    python -m bench.run --quick           # smoke sizes, prints the report
    python -m bench.run --only packing,flops --out /tmp/b

Benches: throughput (1), packing (2), flops (3, shares the throughput rounds),
operator (4 and 5), axolotl (6: against axolotl itself; needs `make axolotl`).
Results go to OUT/results.json and OUT/RESULTS.md; a run of some benches (--only)
keeps the other benches' last results from OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import LoadLog, interleave, machine, median, run_worker

BENCHES = ("throughput", "packing", "flops", "operator", "axolotl")


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
    latency_scales: tuple[int, ...] = (1, 100, 500)
    latency_nodes: int = 2
    harness_emulator_scale: int | None = 100  # the same scale on the unmodified emulator
    memory_jobs: int = 1000  # also the 1000-job latency row
    memory_nodes: int = 2
    memory_resync: float = 5.0
    memory_kubelet: bool = True  # measure at the steady state: every job Running
    resync: float = 5.0
    op_timeout: float = 600.0
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
    latency_scales=(1, 3),
    latency_nodes=2,
    harness_emulator_scale=None,
    memory_jobs=4,
    memory_nodes=1,
    memory_resync=5.0,
    memory_kubelet=False,
    op_timeout=120.0,
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
    from bench.operator_scale import run_scale

    latency = []
    for jobs in sizes.latency_scales:
        load.sample()
        print(f"  operator: {jobs} jobs x {sizes.latency_nodes} nodes", file=sys.stderr, flush=True)
        latency.append(
            run_scale(
                jobs, sizes.latency_nodes, resync_seconds=sizes.resync, timeout=sizes.op_timeout
            )
        )
        load.sample()
    harness = None
    if sizes.harness_emulator_scale:
        n = sizes.harness_emulator_scale
        print(f"  operator: {n} jobs on the harness's emulator as is", file=sys.stderr, flush=True)
        harness = run_scale(
            n,
            sizes.latency_nodes,
            resync_seconds=sizes.resync,
            timeout=sizes.op_timeout,
            lean=False,
        )
        load.sample()
    print(f"  operator: memory at {sizes.memory_jobs} jobs", file=sys.stderr, flush=True)
    memory = run_scale(
        sizes.memory_jobs,
        sizes.memory_nodes,
        resync_seconds=sizes.memory_resync,
        timeout=sizes.op_timeout,
        kubelet_runs_pods=sizes.memory_kubelet,
    )
    load.sample()
    return {"latency": latency, "harness_emulator": harness, "memory": memory}


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
    args = parser.parse_args(argv)
    only = {b.strip() for b in args.only.split(",") if b.strip()}
    unknown = only - set(BENCHES)
    if unknown:
        parser.error(f"unknown bench(es) {', '.join(sorted(unknown))}; choose from {BENCHES}")
    sizes = QUICK if args.quick else Sizes()
    if args.repeats:
        sizes.repeats = args.repeats
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
    if "operator" in only:
        load = LoadLog()
        print("operator: latency and memory", file=sys.stderr, flush=True)
        try:
            results["operator"] = run_operator(sizes, load)
            results["operator"]["load"] = load.summary()
        except Exception:  # noqa: BLE001
            results["errors"]["operator"] = traceback.format_exc()
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
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        (out / "RESULTS.md").write_text(markdown)
        if "axolotl" in results and "axolotl" in only:
            from bench.vs_axolotl.speed import merge_headline

            merge_headline(out / "headline.json", results["axolotl"]["headline"])
        print(f"wrote {out / 'RESULTS.md'} and {out / 'results.json'}", file=sys.stderr)
    else:
        print(markdown)
    for name, error in results["errors"].items():
        print(f"bench {name} failed:\n{error}", file=sys.stderr)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
