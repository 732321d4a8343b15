"""Bench 1 and 3: train tokens/s of our loop vs a plain HF Trainer + peft baseline,
peak RSS of each, and achieved FLOP/s against the measured matmul peak (MFU).

Variants (each a fresh worker process, interleaved round by round):

- `hf_trainer`  baseline: `transformers.Trainer` on `peft.get_peft_model(model, LoraConfig)`,
                padded batches from `DataCollatorForSeq2Seq` (right-padded to the longest
                row of each micro-batch, labels padded with -100).
- `ours`        our loop (`finetune_runtime.train.loop.Trainer`, what `finetune train` runs),
                padded to the longest row of each micro-batch.
- `ours_packed` our loop with `sample_packing` (rows of `sequence_len` tokens).
- `matmul_peak` square fp32 matmuls (see bench.flops).

All three training variants read the same tokenized examples (our data pipeline builds
them; the baseline gets exactly those input_ids/labels), the same LoRA config,
micro-batch, accumulation, optimizer (AdamW), constant LR and clipping, in fp32 on CPU.

Throughput is non-pad input tokens processed per second over `steps` optimizer steps
after `warmup` steps (the same definition for every variant: padding and the packing
row's tail never count). The clock runs from the end of warmup step to the end of the
last step, so data loading and collation are inside it for everyone.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any

from bench.common import peak_rss_mib, rss_mib, worker_main

TRAIN_VARIANTS = ("hf_trainer", "ours", "ours_packed")


def _window(marks: list[tuple[float, int]], warmup: int, steps: int) -> dict[str, Any]:
    """Tokens/s between the end of step `warmup` and the end of step `warmup + steps`."""
    if warmup < 1:
        raise ValueError("warmup must be at least 1 step: its end starts the clock")
    if len(marks) < warmup + steps:
        raise RuntimeError(f"only {len(marks)} steps recorded, expected {warmup + steps}")
    t0, k0 = marks[warmup - 1]
    t1, k1 = marks[warmup + steps - 1]
    seconds = t1 - t0
    timed = marks[warmup - 1 : warmup + steps]
    step_seconds = [b[0] - a[0] for a, b in zip(timed, timed[1:], strict=False)]
    step_tokens = [b[1] - a[1] for a, b in zip(timed, timed[1:], strict=False)]
    rates = sorted(n / dt for n, dt in zip(step_tokens, step_seconds, strict=True))
    return {
        "seconds": seconds,
        "tokens": k1 - k0,
        "tokens_per_s": (k1 - k0) / seconds,
        # Robust to a load spike hitting a few steps: the median step's rate.
        "step_median_tokens_per_s": rates[len(rates) // 2],
        "step_seconds": step_seconds,
        "step_tokens": step_tokens,
    }


def _config(args: dict[str, Any], packed: bool, output_dir: str) -> Any:
    from bench.data import train_config
    from finetune_runtime.config import parse_config

    return parse_config(
        train_config(
            args["data"],
            output_dir,
            base_model=args["model"],
            batch_size=args["batch_size"],
            accumulation=args["accumulation"],
            sequence_len=args["sequence_len"],
            sample_packing=packed,
        )
    )


def run_ours(args: dict[str, Any], packed: bool) -> dict[str, Any]:
    from bench.flops import effective_context, flop_model
    from finetune_runtime.train.backends.factory import closing, create_backend
    from finetune_runtime.train.loop import Trainer, TrainOptions

    marks: list[tuple[float, int]] = []
    seen = {"tokens": 0, "lengths": []}
    facts: dict[str, Any] = {}

    class TimedTrainer(Trainer):
        """Our trainer, unchanged, with a token counter on its collate function and a
        clock on its optimizer's step."""

        def _setup(self) -> None:
            super()._setup()
            inner = self.collate

            def counting(rows: list[dict[str, Any]]) -> Any:
                seen["tokens"] += sum(len(r["input_ids"]) for r in rows)
                return inner(rows)

            self.collate = counting
            self.optimizer.register_step_post_hook(
                lambda *_: marks.append((time.perf_counter(), seen["tokens"]))
            )
            facts["flops"] = flop_model(self.backend.unwrap()).__dict__
            facts["rss_after_setup_mib"] = rss_mib()
            facts["train_rows"] = len(self.data.train)
            rows = [self.data.train[i] for i in range(len(self.data.train))]
            lengths = (
                [len(e["input_ids"]) for e in rows]
                if not packed
                else [n for row in rows for n in _segment_lengths(row)]
            )
            facts["context"] = effective_context(lengths)

    with tempfile.TemporaryDirectory(prefix="bench-ours-") as out:
        config = _config(args, packed, out)
        options = TrainOptions(
            max_steps=args["warmup"] + args["steps"],
            resume=False,
            serve_progress=False,
            progress_bar=False,
        )
        with closing(create_backend(config)) as backend:
            TimedTrainer(config, backend, options).run()
    return {**_window(marks, args["warmup"], args["steps"]), **facts}


def _segment_lengths(row: dict[str, list[int]]) -> list[int]:
    """Example lengths inside a packed row (position ids restart at 0 per example)."""
    lengths: list[int] = []
    for p in row["position_ids"]:
        if p == 0:
            lengths.append(0)
        lengths[-1] += 1
    return lengths


def run_hf_trainer(args: dict[str, Any]) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from bench.flops import effective_context, flop_model
    from finetune_runtime.data import build_datasets
    from finetune_runtime.model import load as models

    marks: list[tuple[float, int]] = []
    seen = {"tokens": 0}

    with tempfile.TemporaryDirectory(prefix="bench-hf-") as out:
        config = _config(args, False, out)
        source = models.resolve_model_source(config.base_model)
        tokenizer = models.load_tokenizer(config, source)
        # The very examples our loop trains on (same tokenization, masking, truncation).
        examples = build_datasets(config, tokenizer).train.examples
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
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
        training = config.training

        class Clock(TrainerCallback):
            def on_step_end(self, *_: Any, **__: Any) -> None:
                marks.append((time.perf_counter(), seen["tokens"]))

        class CountingTrainer(Trainer):
            def training_step(self, model: Any, inputs: Any, *rest: Any, **kw: Any) -> Any:
                seen["tokens"] += int(inputs["attention_mask"].sum())
                return super().training_step(model, inputs, *rest, **kw)

        targs = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=training.batch_size,
            gradient_accumulation_steps=training.gradient_accumulation_steps,
            learning_rate=training.learning_rate,
            lr_scheduler_type="constant",
            optim="adamw_torch",
            weight_decay=training.weight_decay,
            adam_beta1=training.adam_beta1,
            adam_beta2=training.adam_beta2,
            adam_epsilon=training.adam_epsilon,
            max_grad_norm=training.max_grad_norm,
            max_steps=args["warmup"] + args["steps"],
            use_cpu=True,
            seed=config.seed,
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
            remove_unused_columns=False,
        )
        collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
        trainer = CountingTrainer(
            model=model,
            args=targs,
            train_dataset=examples,
            data_collator=collator,
            callbacks=[Clock()],
        )
        facts = {
            "flops": flop_model(model).__dict__,
            "rss_after_setup_mib": rss_mib(),
            "train_rows": len(examples),
            "context": effective_context([len(e["input_ids"]) for e in examples]),
        }
        trainer.train()
    return {**_window(marks, args["warmup"], args["steps"]), **facts}


def run_peak(args: dict[str, Any]) -> dict[str, Any]:
    from bench.flops import matmul_peak

    sizes = tuple(args.get("matmul_sizes", (256, 512, 1024, 2048)))
    return matmul_peak(sizes, best_of=args.get("best_of", 5))


def worker(args: dict[str, Any]) -> dict[str, Any]:
    """One variant in this (fresh) process; adds its peak RSS."""
    import logging

    import torch

    logging.disable(logging.WARNING)
    if args.get("threads"):
        torch.set_num_threads(int(args["threads"]))
    variant = args["variant"]
    load_before = os.getloadavg()[0]
    if variant == "hf_trainer":
        result = run_hf_trainer(args)
    elif variant in ("ours", "ours_packed"):
        result = run_ours(args, packed=variant == "ours_packed")
    elif variant == "matmul_peak":
        result = run_peak(args)
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    result |= {
        "variant": variant,
        "peak_rss_mib": peak_rss_mib(),
        "threads": torch.get_num_threads(),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }
    return result


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:], worker))
