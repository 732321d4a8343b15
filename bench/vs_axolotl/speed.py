"""Speed and memory against axolotl, interleaved, on `builtin:mid-llama` (bench 6).

Each round trains the same YAML once per variant (ours / axolotl × padded / packed),
each in a fresh process run the way its users run it, in a rotated order. Per run:
end-to-end wall time (process start to exit: imports, model load, tokenization,
training, saving), CPU time, peak RSS (os.wait4), and training tokens/s. Ratios are
paired per round; the reported statistic is their median.

Training tokens/s = the dataset's tokens (both tools tokenize them identically, see
tests/compat) / the tool's own training time (ours: train_summary.json
`train_seconds`; axolotl: the HF Trainer's `train_runtime`). axolotl's multipack
sampler drops a few samples per epoch, so for packed runs this *overstates* its rate
slightly: the comparison errs in its favour.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.common import LoadLog, interleave, median
from bench.vs_axolotl import runs
from bench.vs_axolotl.cases import ALPACA, base_config

MODES = ("padded", "packed")
MEASURES = ("wall_s", "cpu_s", "peak_rss_mib", "train_seconds", "train_tokens_per_s")
TOOLS = ("ours", "axolotl")


@dataclass
class SpeedSizes:
    model: str = "mid-llama"
    rows: int = 16
    sequence_len: int = 256
    batch_size: int = 4
    repeats: int = 2
    threads: int = 1  # as the other benches: see docs/benchmarks.md "Ground rules"


QUICK = SpeedSizes(model="tiny-llama", rows=16, sequence_len=256, batch_size=4, repeats=1)


def bench_config(model_dir: Path, packed: bool, sizes: SpeedSizes) -> dict[str, Any]:
    return base_config(model_dir, sizes.sequence_len) | {
        "datasets": [ALPACA],
        "micro_batch_size": sizes.batch_size,
        "num_epochs": 1,
        "learning_rate": 0.0002,
        "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "sample_packing": packed,
        "logging_steps": 1,
        "saves_per_epoch": 1,
        "save_total_limit": 1,
    }


def one_run(tool: str, mode: str, model_dir: Path, data: Path, work: Path, sizes: SpeedSizes):
    """Train once in a fresh directory; the run's measurements."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copy(data, work / "data.jsonl")
    config = work / "config.yml"
    config.write_text(yaml.safe_dump(bench_config(model_dir, mode == "packed", sizes)))
    runner = runs.ours if tool == "ours" else runs.theirs
    run = runner(config, work, threads=sizes.threads)
    shutil.rmtree(work, ignore_errors=True)
    return run


def run(sizes: SpeedSizes, workdir: Path, load: LoadLog) -> dict[str, Any]:
    """All rounds; raw runs plus the paired ratios per mode and pooled."""
    from bench.data import synthetic_rows, write_jsonl
    from finetune_runtime.model.tiny import resolve_builtin

    # The builtin's cached directory is an ordinary save_pretrained model directory.
    model_dir = resolve_builtin("builtin:" + sizes.model)
    data = write_jsonl(workdir / "data.jsonl", synthetic_rows(sizes.rows, seed=6))
    tokens = dataset_tokens(model_dir, data, sizes)
    raw: list[dict[str, Any]] = []
    variants = [f"{tool}:{mode}" for mode in MODES for tool in TOOLS]
    for round_no, variant in interleave(variants, sizes.repeats):
        tool, mode = variant.split(":")
        load.sample()
        print(f"  axolotl bench round {round_no}: {variant}", file=sys.stderr, flush=True)
        result = one_run(tool, mode, model_dir, data, workdir / "run", sizes)
        entry = asdict(result) | {"round": round_no, "mode": mode}
        entry["train_tokens_per_s"] = (
            tokens[mode] / result.train_seconds if result.train_seconds else None
        )
        raw.append(entry)
    load.sample()
    return {"sizes": asdict(sizes), "dataset_tokens": tokens, "raw": raw} | summarize(raw)


def dataset_tokens(model_dir: Path, data: Path, sizes: SpeedSizes) -> dict[str, int]:
    """Tokens in the training set (the same for packed and padded: packing adds no pad)."""
    from bench.vs_axolotl.ours import tokenize_case

    probe = data.parent / "probe"
    probe.mkdir(exist_ok=True)
    shutil.copy(data, probe / "data.jsonl")
    (probe / "config.yml").write_text(yaml.safe_dump(bench_config(model_dir, False, sizes)))
    total = sum(len(e["input_ids"]) for e in tokenize_case(probe / "config.yml").examples)
    return {mode: total for mode in MODES}


def summarize(raw: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of paired per-round ratios, per mode and pooled over both modes."""
    by = {(r["round"], r["mode"], r["tool"]): r for r in raw}
    pairs = [
        (by[(rnd, mode, "ours")], by[(rnd, mode, "axolotl")])
        for (rnd, mode, tool) in by
        if tool == "ours" and (rnd, mode, "axolotl") in by
    ]

    def ratios(mode: str | None) -> dict[str, float]:
        sel = [(o, t) for o, t in pairs if mode is None or o["mode"] == mode]
        return {
            "end_to_end": median(t["wall_s"] / o["wall_s"] for o, t in sel),
            "train_tokens_per_s": median(
                o["train_tokens_per_s"] / t["train_tokens_per_s"]
                for o, t in sel
                if o["train_tokens_per_s"] and t["train_tokens_per_s"]
            ),
            "peak_rss": median(o["peak_rss_mib"] / t["peak_rss_mib"] for o, t in sel),
            "cpu": median(t["cpu_s"] / o["cpu_s"] for o, t in sel),
            "pairs": len(sel),
        }

    per_mode = {mode: ratios(mode) for mode in MODES}
    pooled = ratios(None)
    return {
        "ratios": per_mode | {"pooled": pooled},
        "medians": {
            f"{tool}:{mode}": {
                key: median(r[key] for r in raw if r["tool"] == tool and r["mode"] == mode)
                for key in (
                    "wall_s",
                    "cpu_s",
                    "peak_rss_mib",
                    "train_seconds",
                    "train_tokens_per_s",
                )
            }
            for tool in TOOLS
            for mode in MODES
        },
        "headline": {
            "axolotl_train_tokens_per_s_ratio_mid": round(pooled["train_tokens_per_s"], 3),
            "axolotl_end_to_end_ratio_mid": round(pooled["end_to_end"], 3),
            "axolotl_peak_rss_ratio_mid": round(pooled["peak_rss"], 3),
        },
    }


def merge_headline(path: Path, keys: dict[str, float]) -> None:
    """Add our keys to the flat, shared headline map, keeping everyone else's."""
    current = json.loads(path.read_text()) if path.exists() else {}
    current.update(keys)
    path.write_text(json.dumps(dict(sorted(current.items())), indent=1) + "\n")
