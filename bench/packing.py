"""Bench 2: packing efficiency, non-pad tokens / total tokens fed to the model.

For each dataset and `sequence_len`, the examples come from our data pipeline
(`build_datasets`: template, tokenization, masking, truncation at `sequence_len`), then:

- padded, batch max: micro-batches of `batch_size` examples in a seeded random order,
  each right-padded to its longest example (what our loop and DataCollatorForSeq2Seq do);
- padded, fixed: every example padded to `sequence_len` (padding="max_length");
- packed: our best-fit-decreasing packing into rows of `sequence_len` (the pipeline's
  `sample_packing: true`): how full the rows are. Since packing became padding-free (the
  collator concatenates a micro-batch's rows without padding), no compute goes to the
  gaps; the fill sets how many tokens a micro-batch of rows carries.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from bench.data import train_config


def padded_efficiency(lengths: list[int], batch_size: int, seed: int = 0) -> float:
    """Non-pad / total tokens over one epoch of shuffled micro-batches padded to their max."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    real = total = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start : start + batch_size]]
        real += sum(batch)
        total += max(batch) * len(batch)
    return real / total if total else 0.0


def measure(
    data: str | Path, tokenizer: Any, sequence_len: int, batch_size: int, base_model: str
) -> dict[str, Any]:
    from finetune_runtime.config import parse_config
    from finetune_runtime.data import build_datasets

    def bundle(packed: bool) -> Any:
        config = parse_config(
            train_config(
                data,
                "/tmp/unused",
                base_model=base_model,
                batch_size=batch_size,
                accumulation=1,
                sequence_len=sequence_len,
                sample_packing=packed,
            )
        )
        return build_datasets(config, tokenizer)

    plain = bundle(False)
    packed = bundle(True)
    lengths = plain.train.lengths
    tokens = sum(lengths)
    padded = padded_efficiency(lengths, batch_size)
    fixed = tokens / (len(lengths) * sequence_len)
    pack = float(packed.stats.packing_efficiency or 0.0)
    return {
        "sequence_len": sequence_len,
        "examples": len(lengths),
        "tokens": tokens,
        "mean_len": tokens / len(lengths),
        "max_len": max(lengths),
        "truncated": sum(d.truncated for d in plain.stats.datasets),
        "packed_rows": len(packed.train),
        "padded_batch_max": padded,
        "padded_fixed": fixed,
        "packed": pack,
        "packed_vs_padded": pack / padded,
    }


def run(
    datasets: dict[str, Path],
    sequence_lens: list[int],
    batch_size: int,
    base_model: str,
) -> dict[str, Any]:
    from finetune_runtime.config import parse_config
    from finetune_runtime.model.load import load_tokenizer, resolve_model_source

    config = parse_config(
        train_config(
            next(iter(datasets.values())),
            "/tmp/unused",
            base_model=base_model,
            batch_size=batch_size,
            accumulation=1,
            sequence_len=sequence_lens[0],
            sample_packing=False,
        )
    )
    tokenizer = load_tokenizer(config, resolve_model_source(base_model))
    rows = []
    for name, path in datasets.items():
        for seq in sequence_lens:
            rows.append({"dataset": name, **measure(path, tokenizer, seq, batch_size, base_model)})
    return {"batch_size": batch_size, "rows": rows}
