"""The report of a run: `train_summary.json` and the `TrainResult` handed back to the CLI."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_runtime.model.generate import Sample, sample_from_example

if TYPE_CHECKING:
    from finetune_runtime.config import FineTuneConfig
    from finetune_runtime.data.pipeline import DatasetBundle, TokenizedDataset
    from finetune_runtime.train.backends.base import Backend
    from finetune_runtime.train.plan import TrainingPlan
    from finetune_runtime.train.resume import RunState
    from finetune_runtime.train.setup import ModelFacts

SUMMARY_FILE = "train_summary.json"
TRAIN_SAMPLES = 3  # training prompts `finetune run` shows generations for


@dataclass
class TrainResult:
    output_dir: Path
    step: int
    total_steps: int
    stopped: bool  # a stop signal ended the run early (after checkpointing)
    weights_dir: Path | None  # output_dir/adapter or output_dir/model, when completed
    summary: dict[str, Any] = field(default_factory=dict)
    sample: Sample | None = None  # a held-out prompt (else a training one), to look at generations
    train_samples: list[Sample] = field(default_factory=list)  # prompts it was trained on
    held_out: Sample | None = None  # a prompt from the eval split, never trained on


@dataclass(frozen=True)
class RunFacts:
    """What a summary reports besides the counters: fixed once setup is done."""

    config: FineTuneConfig
    backend: Backend
    plan: TrainingPlan
    model: ModelFacts
    data: DatasetBundle


def summarize(status: str, facts: RunFacts, state: RunState) -> dict[str, Any]:
    """`status`: completed, stopped or diverged."""
    config, plan, backend = facts.config, facts.plan, facts.backend
    losses = [h["loss"] for h in state.history]
    last_eval = state.eval_history[-1] if state.eval_history else {}
    return {
        "status": status,
        "base_model": config.base_model,
        "adapter": config.adapter,
        "steps": state.step,
        "total_steps": plan.total_steps,
        "epochs": plan.epoch_progress(state.step),
        "world_size": backend.world_size,
        "precision": backend.options.precision,
        "kernels": facts.model.kernels,
        "effective_batch_size": config.training.batch_size
        * config.training.gradient_accumulation_steps
        * backend.world_size,
        "trainable_parameters": facts.model.trainable,
        "total_parameters": facts.model.total_params,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "final_eval_loss": last_eval["eval_loss"] if last_eval else None,
        "final_eval_perplexity": last_eval.get("eval_perplexity") if last_eval else None,
        "tokens": state.tokens,
        "train_seconds": round(state.train_seconds, 3),
        "tokens_per_second": state.tokens / state.train_seconds if state.train_seconds else None,
        "resumed_from": state.resumed_from,
        "data": facts.data.stats.as_dict(),
        "losses": state.history,
        "eval_losses": state.eval_history,
    }


def result(
    facts: RunFacts,
    state: RunState,
    summary: dict[str, Any],
    stopped: bool,
    weights_dir: Path | None,
) -> TrainResult:
    data = facts.data
    return TrainResult(
        Path(facts.config.output_dir),
        state.step,
        facts.plan.total_steps,
        stopped,
        weights_dir,
        summary,
        sample=next(iter(samples(data.eval, 1) + samples(data.train, 1)), None),
        train_samples=samples(data.train, TRAIN_SAMPLES),
        held_out=next(iter(samples(data.eval, 1)), None),
    )


def samples(dataset: TokenizedDataset | None, count: int) -> list[Sample]:
    """Prompt/reference pairs from the first `count` rows (a packed row: its first example)."""
    found: list[Sample] = []
    for i in range(len(dataset) if dataset is not None else 0):
        assert dataset is not None
        sample = sample_from_example(dataset[i])
        if sample is not None:
            found.append(sample)
        if len(found) == count:
            break
    return found


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
