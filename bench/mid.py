"""Bench 6: training speed on `builtin:mid-llama` (d=512, 8 layers, vocab 32k) against the
two HF Trainer + peft paths a user would pick, measured so the ratio survives a loaded box.

Variants (each a fresh worker process, one torch thread, interleaved round by round):

- `hf_padded`     `transformers.Trainer` on a peft LoRA model, `DataCollatorForSeq2Seq`
                  (right-padded to the longest row of each micro-batch), HF's CPU default
                  precision (fp32), stock forward (full logits).
- `hf_flattened`  the same Trainer with `DataCollatorWithFlattening`: HF's own padding-free
                  path (one flattened row per micro-batch, position ids restart per example,
                  sdpa with the block-diagonal mask transformers derives from them).
- `ours`          `finetune train`'s loop with the defaults this issue ships: precision auto
                  (bf16 on a CPU with AMX/AVX512-BF16), kernels auto (labelled-only chunked
                  LM head + loss), sample_packing (padding-free rows, per-example attention).

Same tokens: all three read the same tokenized examples (our pipeline builds them). Our
micro-batch is `batch_size` packed rows of `sequence_len`; the HF variants get as many
examples per micro-batch as our packed rows hold on average, so every variant trains on
the same number of tokens per optimizer step.

Each optimizer step records wall time and process CPU time. With one torch thread the CPU
time of a step is what the step costs, whatever else runs on the machine; the headline
ratio is tokens per CPU-second, ours / baseline, per round, and its median over rounds.
"""

from __future__ import annotations

import sys
import tempfile
import time
from typing import Any

from bench.common import median, peak_rss_mib, rss_mib, worker_main

VARIANTS = ("hf_padded", "hf_flattened", "ours")
# Not in the default rounds: HF flattened with `bf16=True` (a user must opt in on CPU).
# Ablations of ours: one default switched back at a time.
EXTRA_VARIANTS = ("hf_flattened_bf16", "ours_fp32", "ours_kernels_none", "ours_unpacked")


def _steps(marks: list[tuple[float, float, int]], warmup: int, steps: int) -> dict[str, Any]:
    """Per-step wall/CPU seconds and tokens over the timed window (after `warmup` steps)."""
    if len(marks) < warmup + steps:
        raise RuntimeError(f"only {len(marks)} steps recorded, expected {warmup + steps}")
    timed = marks[warmup - 1 : warmup + steps]
    pairs = list(zip(timed, timed[1:], strict=False))
    wall = [b[0] - a[0] for a, b in pairs]
    cpu = [b[1] - a[1] for a, b in pairs]
    tokens = [b[2] - a[2] for a, b in pairs]
    return {
        "step_wall_seconds": wall,
        "step_cpu_seconds": cpu,
        "step_tokens": tokens,
        "tokens": sum(tokens),
        "tokens_per_wall_s": sum(tokens) / sum(wall),
        "tokens_per_cpu_s": sum(tokens) / sum(cpu),
    }


def _mark(marks: list[tuple[float, float, int]], tokens: int) -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()  # the step's kernels are done before the clock reads
    marks.append((time.perf_counter(), time.process_time(), tokens))


def _config(
    args: dict[str, Any], out: str, packed: bool, precision: str, kernels: str = "auto"
) -> Any:
    from bench.data import train_config
    from finetune_runtime.config import parse_config

    raw = train_config(
        args["data"],
        out,
        base_model=args["model"],
        batch_size=args["batch_size"],
        accumulation=args["accumulation"],
        sequence_len=args["sequence_len"],
        sample_packing=packed,
    )
    raw["training"]["precision"] = precision
    raw["training"]["kernels"] = kernels
    if args.get("deepspeed"):
        raw["deepspeed"] = args["deepspeed"]
    return parse_config(raw)


def run_ours(args: dict[str, Any], ablation: str = "") -> dict[str, Any]:
    from finetune_runtime.train.backends.factory import closing, create_backend
    from finetune_runtime.train.loop import Trainer, TrainOptions

    marks: list[tuple[float, float, int]] = []
    seen = {"tokens": 0}
    facts: dict[str, Any] = {}

    class TimedTrainer(Trainer):
        def _setup(self) -> None:
            super()._setup()
            inner = self.collate

            def counting(rows: list[dict[str, Any]]) -> Any:
                seen["tokens"] += sum(len(r["input_ids"]) for r in rows)
                return inner(rows)

            self.collate = counting
            self.optimizer.register_step_post_hook(lambda *_: _mark(marks, seen["tokens"]))
            facts.update(
                world_size=self.backend.world_size,
                rss_after_setup_mib=rss_mib(),
                precision=self.backend.options.precision,
                kernels=self.facts.model.kernels,
                attention=self.backend.unwrap().config._attn_implementation,
            )

    with tempfile.TemporaryDirectory(prefix="bench-mid-") as out:
        config = _config(
            args,
            out,
            packed=ablation != "unpacked",
            precision="fp32" if ablation == "fp32" else "auto",
            kernels="none" if ablation == "kernels_none" else "auto",
        )
        options = TrainOptions(
            max_steps=args["warmup"] + args["steps"],
            resume=False,
            serve_progress=False,
            progress_bar=False,
        )
        with closing(create_backend(config)) as backend:
            TimedTrainer(config, backend, options).run()
    return {**_steps(marks, args["warmup"], args["steps"]), **facts}


def run_hf(args: dict[str, Any], flattened: bool) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        DataCollatorWithFlattening,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from finetune_runtime.data import build_datasets
    from finetune_runtime.model import load as models

    marks: list[tuple[float, float, int]] = []
    seen = {"tokens": 0}
    with tempfile.TemporaryDirectory(prefix="bench-mid-hf-") as out:
        config = _config(args, out, packed=False, precision="fp32")
        source = models.resolve_model_source(config.base_model)
        tokenizer = models.load_tokenizer(config, source)
        examples = build_datasets(config, tokenizer).train.examples
        precision = args.get("hf_precision", "fp32")
        load: dict[str, Any] = {"dtype": torch.float32}
        if args.get("hf_attention"):
            load["attn_implementation"] = args["hf_attention"]
        model = AutoModelForCausalLM.from_pretrained(source, **load)
        model.config.use_cache = False
        lora = config.lora
        model = get_peft_model(
            model,
            LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules),
                task_type="CAUSAL_LM",
            ),
        )
        t = config.training

        class Clock(TrainerCallback):
            def on_step_end(self, *_: Any, **__: Any) -> None:
                _mark(marks, seen["tokens"])

        class CountingTrainer(Trainer):
            def training_step(self, model: Any, inputs: Any, *rest: Any, **kw: Any) -> Any:
                mask = inputs.get("attention_mask")
                seen["tokens"] += (
                    int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
                )
                return super().training_step(model, inputs, *rest, **kw)

        targs = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=args["hf_batch_size"],
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            learning_rate=t.learning_rate,
            lr_scheduler_type="constant",
            optim="adamw_torch",
            max_grad_norm=t.max_grad_norm,
            max_steps=args["warmup"] + args["steps"],
            use_cpu=not torch.cuda.is_available(),
            bf16=precision == "bf16",
            seed=config.seed,
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
            remove_unused_columns=False,
        )
        collator: Any = (
            DataCollatorWithFlattening()
            if flattened
            else DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
        )
        trainer = CountingTrainer(
            model=model,
            args=targs,
            train_dataset=examples,
            data_collator=collator,
            callbacks=[Clock()],
        )
        setup_rss = rss_mib()
        trainer.train()
    return {
        **_steps(marks, args["warmup"], args["steps"]),
        "rss_after_setup_mib": setup_rss,
        "world_size": 1,
        "precision": precision,
        "kernels": "none",
        "attention": model.config._attn_implementation,
    }


def worker(args: dict[str, Any]) -> dict[str, Any]:
    import logging
    import os

    import torch

    logging.disable(logging.WARNING)
    if int(args.get("threads", 1)) > 0:  # 0: torch's default (the GPU bench)
        torch.set_num_threads(int(args["threads"]))
    variant = args["variant"]
    load_before = os.getloadavg()[0]
    if variant == "ours" or variant.startswith("ours_"):
        result = run_ours(args, ablation=variant.removeprefix("ours").lstrip("_"))
    elif variant in ("hf_padded", "hf_flattened", "hf_flattened_bf16"):
        if variant == "hf_flattened_bf16":
            args = {**args, "hf_precision": "bf16"}
        result = run_hf(args, flattened=variant != "hf_padded")
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    return result | {
        "variant": variant,
        "peak_rss_mib": peak_rss_mib(),
        "threads": torch.get_num_threads(),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


# --------------------------------------------------------------------------- the driver side


def examples_per_row(data: str, model: str, sequence_len: int) -> tuple[float, int]:
    """(examples per packed row, examples) of the bench data: sizes the HF micro-batch."""
    from finetune_runtime.data import build_datasets
    from finetune_runtime.model import load as models

    with tempfile.TemporaryDirectory(prefix="bench-mid-probe-") as out:
        args = {"data": data, "model": model, "batch_size": 1, "accumulation": 1}
        config = _config({**args, "sequence_len": sequence_len}, out, True, "fp32")
        tokenizer = models.load_tokenizer(config, models.resolve_model_source(model))
        train = build_datasets(config, tokenizer).train
        rows = len(train)
        n = sum(1 for row in train.examples for p in row["position_ids"] if p == 0)
    return n / rows, n


def paired_ratios(runs: list[dict[str, Any]], variant: str, baseline: str, key: str) -> list[float]:
    """Per round: variant[key] / baseline[key] (both measured in that round)."""
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for run in runs:
        by_round.setdefault(run["round"], {})[run["variant"]] = run
    return [
        rnd[variant][key] / rnd[baseline][key]
        for _, rnd in sorted(by_round.items())
        if variant in rnd and baseline in rnd
    ]


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-variant medians and the paired per-round ratios of `ours` against each baseline."""
    table = {}
    for v in (*VARIANTS, *EXTRA_VARIANTS):
        mine = [r for r in runs if r["variant"] == v]
        if not mine:
            continue
        table[v] = {
            "tokens_per_cpu_s": median(r["tokens_per_cpu_s"] for r in mine),
            "tokens_per_wall_s": median(r["tokens_per_wall_s"] for r in mine),
            "tokens_per_step": median(r["tokens"] / len(r["step_tokens"]) for r in mine),
            "peak_rss_mib": median(r["peak_rss_mib"] for r in mine),
            "precision": mine[0]["precision"],
            "kernels": mine[0]["kernels"],
            "attention": mine[0]["attention"],
        }
    ratios: dict[str, Any] = {}
    for base in ("hf_padded", "hf_flattened", *EXTRA_VARIANTS):
        if base not in table:
            continue
        for key, name in (("tokens_per_cpu_s", "cpu"), ("tokens_per_wall_s", "wall")):
            values = paired_ratios(runs, "ours", base, key)
            ratios[f"{name}_vs_{base}"] = {"median": median(values), "rounds": values}
        rss = paired_ratios(runs, "ours", base, "peak_rss_mib")
        ratios[f"rss_vs_{base}"] = {"median": median(rss), "rounds": rss}
    return {"variants": table, "ratios": ratios}


def headline(summary: dict[str, Any]) -> dict[str, float]:
    r = summary["ratios"]
    if "cpu_vs_hf_padded" not in r or "cpu_vs_hf_flattened" not in r:
        return {}
    return {
        "train_ratio_vs_hf_padded_mid": round(r["cpu_vs_hf_padded"]["median"], 3),
        "train_ratio_vs_hf_flattened_mid": round(r["cpu_vs_hf_flattened"]["median"], 3),
        "train_peak_rss_ratio_vs_hf_mid": round(r["rss_vs_hf_padded"]["median"], 3),
    }


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:], worker))


def run_rounds(
    args: dict[str, Any], repeats: int, load: Any, variants: tuple[str, ...] = VARIANTS
) -> dict[str, Any]:
    """Every variant once per round, order rotated per round; `args` are the worker args
    without `variant` / `hf_batch_size` (sized here from the data)."""
    from bench.common import interleave, run_worker

    per_row, examples = examples_per_row(args["data"], args["model"], args["sequence_len"])
    args = {**args, "hf_batch_size": max(1, round(per_row * args["batch_size"]))}
    runs: list[dict[str, Any]] = []
    for round_, variant in interleave(variants, repeats):
        load.sample()
        result = run_worker("bench.mid", {**args, "variant": variant}, timeout=3600)
        load.sample()
        runs.append({"round": round_, **result})
        print(
            f"  round {round_} {variant}: {result['tokens_per_cpu_s']:.0f} tokens/CPU-s, "
            f"{result['tokens_per_wall_s']:.0f} tokens/s, "
            f"peak RSS {result['peak_rss_mib']:.0f} MiB",
            file=sys.stderr,
            flush=True,
        )
    summary = summarize(runs)
    return {
        "variants_run": list(variants),
        "args": args,
        "examples": examples,
        "examples_per_row": per_row,
        **summary,
        "headline": headline(summary),
        "runs": runs,
        "load": load.summary(),
    }
