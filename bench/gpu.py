"""`bench/gpu.sh` (`make bench-gpu`): the training-speed comparison on a CUDA machine.

    bench/gpu.sh                 # every visible GPU; writes bench/gpu/ and headline keys
    bench/gpu.sh --dry-run       # no GPU needed: builds and checks the whole plan, runs nothing

Model: `builtin:1b-llama` (TinyLlama-1.1B's shape: d=2048, 22 layers, 32 heads / 4 kv
heads, FFN 5632, vocab 32000), built locally with random weights. LoRA r=8 on q/k/v/o,
the bench's synthetic Alpaca set, bf16 everywhere.

Runs, interleaved over `--repeats` rounds (each a fresh process):

- `hf_padded`     HF Trainer + peft, bf16, sdpa, `DataCollatorForSeq2Seq` padding
- `hf_flattened`  HF Trainer + peft, bf16, flash_attention_2, `DataCollatorWithFlattening`
- `ours`          `finetune train` loop: precision auto (bf16), kernels auto (liger when
                  installed), sample_packing (FlashAttention varlen when flash-attn is installed)
- `ours_zero2`, `ours_zero3`  the same under torchrun on all visible GPUs with DeepSpeed
                  ZeRO-2 / ZeRO-3 (NCCL)

MFU = achieved model FLOP/s (bench.flops' per-token formula, analytic from the model's
shape so ZeRO-3's partitioned weights do not matter) / (the GPU's dense bf16 peak x GPUs).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import RESULT_PREFIX, ROOT, interleave, machine, median, merge_headline
from bench.flops import FlopModel

MODEL = "builtin:1b-llama"
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' datasheets.
BF16_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,  # SXM ("H100 80GB HBM3")
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
}


@dataclass
class Run:
    name: str
    argv: list[str]
    args: dict[str, Any] = field(default_factory=dict)


def peak_tflops(device_name: str) -> float | None:
    """The datasheet bf16 peak for a CUDA device name (longest matching key), else None."""
    hits = [k for k in BF16_PEAK_TFLOPS if k.lower() in device_name.lower()]
    return BF16_PEAK_TFLOPS[max(hits, key=len)] if hits else None


def lora_flop_model(config: dict[str, Any], r: int = 8) -> FlopModel:
    """FlopModel of LoRA r on q/k/v/o for an HF Llama config dict (no weights needed)."""
    d, ff, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    head_dim = d // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * ff
    adapters = layers * r * ((d + d) * 2 + (d + kv) * 2)
    return FlopModel(
        matmul_params=layers * per_layer + d * config["vocab_size"],
        adapter_params=adapters,
        layers=layers,
        hidden=d,
    )


def plan(opts: argparse.Namespace, gpus: int, data: str) -> list[tuple[int, Run]]:
    base = {
        "data": data,
        "model": opts.model,
        "batch_size": opts.batch_size,
        "hf_batch_size": opts.hf_batch_size,
        "accumulation": opts.accumulation,
        "sequence_len": opts.sequence_len,
        "warmup": opts.warmup,
        "steps": opts.steps,
        "threads": 0,
    }
    py = [sys.executable, "-m", "bench.mid", "worker"]
    torchrun = ["torchrun", "--standalone", f"--nproc-per-node={gpus}", "-m", "bench.mid", "worker"]
    runs = {
        "hf_padded": Run("hf_padded", py, {"variant": "hf_padded", "hf_precision": "bf16"}),
        "hf_flattened": Run(
            "hf_flattened",
            py,
            {
                "variant": "hf_flattened",
                "hf_precision": "bf16",
                "hf_attention": "flash_attention_2" if _has("flash_attn") else "sdpa",
            },
        ),
        "ours": Run("ours", py, {"variant": "ours"}),
        "ours_zero2": Run("ours_zero2", torchrun, {"variant": "ours", "deepspeed": "zero2"}),
        "ours_zero3": Run("ours_zero3", torchrun, {"variant": "ours", "deepspeed": "zero3"}),
    }
    order = interleave(list(runs), opts.repeats)
    out = []
    for round_, name in order:
        run = runs[name]
        args = {**base, **run.args}
        out.append((round_, Run(run.name, [*run.argv, json.dumps(args)], args)))
    return out


def check_plan(steps: list[tuple[int, Run]], gpus: int) -> dict[str, Any]:
    """What a dry run can verify without a GPU: every config parses, the DeepSpeed
    configs build for this world size, the model spec is ~1B parameters."""
    from bench.mid import _config
    from finetune_runtime.model.tiny import BUILTINS
    from finetune_runtime.train.backends.deepspeed_config import build, zero_stage

    checked: dict[str, Any] = {}
    for _, run in steps:
        if run.name in checked:
            continue
        config = _config(run.args, "/tmp/bench-gpu-dry-run", run.name.startswith("ours"), "auto")
        entry: dict[str, Any] = {"argv": run.argv[:-1], "base_model": config.base_model}
        if config.deepspeed:
            ds = build(config, gpus, precision="bf16", hidden_size=2048)
            entry["zero_stage"] = zero_stage(ds)
        checked[run.name] = entry
    spec = BUILTINS[MODEL.split(":", 1)[1]]
    shape = {
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "vocab_size": spec.model_vocab_size or spec.vocab_size,
    }
    flops = lora_flop_model(shape)
    params = flops.matmul_params + spec.hidden_size * shape["vocab_size"]  # + embeddings
    return {"runs": checked, "model_shape": shape, "parameters": params}


def run_all(steps: list[tuple[int, Run]], timeout: float) -> list[dict[str, Any]]:
    results = []
    for round_, run in steps:
        proc = subprocess.run(
            run.argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
        if not found:
            raise RuntimeError(f"{run.name} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        result = json.loads(found[0][len(RESULT_PREFIX) :])  # rank 0 prints first
        results.append({**result, "round": round_, "run": run.name})
        print(f"  round {round_} {run.name}: {result['tokens_per_wall_s']:.0f} tok/s", flush=True)
    return results


def summarize(results: list[dict[str, Any]], peak: float | None, gpus: int) -> dict[str, Any]:
    from finetune_runtime.model.tiny import resolve_builtin

    config = json.loads((resolve_builtin(MODEL) / "config.json").read_text())
    per_token = lora_flop_model(config).per_token(1024.0)
    table: dict[str, Any] = {}
    for name in sorted({r["run"] for r in results}):
        mine = [r for r in results if r["run"] == name]
        # Rank 0 reports its own tokens: a per-GPU rate (ranks see equal shares of the data).
        rate = median(r["tokens_per_wall_s"] for r in mine)
        table[name] = {
            "tokens_per_s_per_gpu": rate,
            "gpus": mine[0].get("world_size", 1),
            "mfu": rate * per_token / (peak * 1e12) if peak else None,
            "kernels": mine[0].get("kernels"),
            "attention": mine[0].get("attention"),
        }
    ratios = {}
    for base in ("hf_padded", "hf_flattened"):
        paired = [
            o["tokens_per_wall_s"] / b["tokens_per_wall_s"]
            for o in results
            for b in results
            if o["run"] == "ours" and b["run"] == base and o["round"] == b["round"]
        ]
        ratios[base] = median(paired)
    return {"runs": table, "ratio_vs": ratios, "gpus": gpus, "peak_tflops": peak}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/gpu.sh", description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="check and print the plan, run nothing")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "gpu")
    p.add_argument("--model", default=MODEL)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=4, help="our packed rows per micro-batch")
    p.add_argument(
        "--hf-batch-size",
        type=int,
        help="HF examples per micro-batch (default: as many as our packed rows hold)",
    )
    p.add_argument("--accumulation", type=int, default=2)
    p.add_argument("--sequence-len", type=int, default=2048)
    p.add_argument("--peak-tflops", type=float, help="bf16 peak per GPU (default: datasheet)")
    p.add_argument("--gpus", type=int, help="GPUs for the ZeRO runs (default: all visible)")
    p.add_argument("--timeout", type=float, default=3600)
    opts = p.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not opts.dry_run:
        print("bench/gpu.sh: no CUDA device here; use --dry-run to check the plan", file=sys.stderr)
        return 2
    gpus = opts.gpus or (torch.cuda.device_count() if cuda else 2)
    opts.out.mkdir(parents=True, exist_ok=True)
    from bench.data import synthetic_rows, write_jsonl

    data = write_jsonl(opts.out / "synthetic.jsonl", synthetic_rows(2000, scale=4.0))
    if opts.hf_batch_size is None:
        if opts.dry_run:
            opts.hf_batch_size = 4 * opts.batch_size  # building the 1B model to measure: no
        else:
            from bench.mid import examples_per_row

            per_row, _ = examples_per_row(str(data), opts.model, opts.sequence_len)
            opts.hf_batch_size = max(1, round(per_row * opts.batch_size))
    steps = plan(opts, gpus, str(data))
    checked = check_plan(steps, gpus)
    if opts.dry_run:
        missing = [t for t in ("torchrun",) if shutil.which(t) is None]
        report = {"dry_run": True, "gpus": gpus, "order": [run.name for _, run in steps], **checked}
        report["missing_tools"] = missing
        (opts.out / "plan.json").write_text(json.dumps(report, indent=1) + "\n")
        print(json.dumps(report, indent=1))
        return 0
    name = torch.cuda.get_device_name(0)
    peak = opts.peak_tflops or peak_tflops(name)
    results = run_all(steps, opts.timeout)
    summary = summarize(results, peak, gpus)
    doc = {"machine": {**machine(), "gpu": name, "gpus": gpus}, "options": vars(opts)}
    doc |= {"summary": summary, "raw": results, "plan": [asdict(r) for _, r in steps]}
    (opts.out / "results.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    merge_headline(
        {
            "gpu_train_ratio_vs_hf_padded_1b": round(summary["ratio_vs"]["hf_padded"], 3),
            "gpu_train_ratio_vs_hf_flattened_1b": round(summary["ratio_vs"]["hf_flattened"], 3),
            **{
                f"gpu_mfu_{k}_1b": round(v["mfu"], 4)
                for k, v in summary["runs"].items()
                if v["mfu"]
            },
        }
    )
    print(json.dumps(summary, indent=1))
    return 0


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    sys.exit(main())
