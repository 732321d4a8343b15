"""The training loop: data → accumulated gradients → optimizer steps, with eval,
checkpoints, resume, progress reporting and graceful stop.

Written once against `Backend` (local, DDP, DeepSpeed). Every rank runs the
same code; rank 0 alone logs, serves progress and writes files other than the
collective checkpoint parts.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from finetune_runtime import contract
from finetune_runtime.config import FineTuneConfig
from finetune_runtime.data.pipeline import TokenizedDataset
from finetune_runtime.data.tokenize import IGNORE_INDEX
from finetune_runtime.errors import CheckpointError, ConfigError, DivergedError
from finetune_runtime.model.generate import Sample, sample_from_example
from finetune_runtime.progress.console import StepDisplay, eval_line, format_metrics, perplexity
from finetune_runtime.progress.reporting import ProgressReporter
from finetune_runtime.progress.tracking import (
    Tracking,
    check_installed,
    eval_metrics,
    open_tracking,
)
from finetune_runtime.storage.integrity import architecture_of, write_manifest
from finetune_runtime.train import guards
from finetune_runtime.train.backends.base import Backend, closing, create_backend
from finetune_runtime.train.checkpoint import (
    CheckpointWriter,
    agreed_resume,
    load_rng,
    replace_dir,
)
from finetune_runtime.train.kernels import apply_kernels
from finetune_runtime.train.optim import build_optimizer, build_scheduler
from finetune_runtime.train.plan import TrainingPlan, make_plan
from finetune_runtime.train.signals import GracefulStop

log = logging.getLogger(__name__)

SUMMARY_FILE = "train_summary.json"
TRAIN_SAMPLES = 3  # training prompts `finetune run` shows generations for


@dataclass
class TrainOptions:
    """Run-time choices that are not part of the config (CLI flags)."""

    base_dir: Path | None = None  # where relative dataset/model paths are resolved
    max_steps: int | None = None
    resume: bool | None = None  # None: the config's training.auto_resume
    resume_from: str | None = None  # `--resume CHECKPOINT`: this checkpoint (over the config's)
    resume_with_changes: bool = False  # resume even if the config differs from the checkpoint's
    serve_progress: bool = True
    progress_port: int | None = None  # None: $FINETUNE_PROGRESS_PORT or the default
    progress_host: str = "127.0.0.1"
    progress_bar: bool | None = None  # None: when stderr is a terminal


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


# --------------------------------------------------------------------------- data


def seeded_sampler(dataset: Dataset, backend: Backend, seed: int, shuffle: bool) -> Any:
    """Per-rank shard of the data, reshuffled per epoch from (seed, epoch) alone, so a
    resumed run reads exactly the batches the uninterrupted run would have."""
    return DistributedSampler(
        dataset,
        num_replicas=backend.world_size,
        rank=backend.rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=False,
    )


def epoch_batches(
    dataset: Dataset, sampler: Any, batch_size: int, epoch: int, skip: int, collate: Any
) -> Iterator[dict[str, torch.Tensor]]:
    """Micro-batches of `epoch`, starting after the first `skip` of them."""
    sampler.set_epoch(epoch)
    indices = list(BatchSampler(sampler, batch_size, drop_last=False))[skip:]
    return iter(
        DataLoader(dataset, batch_sampler=indices, collate_fn=collate, generator=_private_rng())
    )


def _private_rng() -> torch.Generator:
    """DataLoader draws a base seed when iterated; from the global generator that would shift
    dropout streams whenever an iterator starts (epochs, evals, resumes). Give it its own."""
    return torch.Generator().manual_seed(0)


class _EvalShard(Dataset):
    """This rank's share of the eval set, padded to equal length across ranks (so
    collective forwards line up) with padding rows contributing no loss."""

    def __init__(self, dataset: Dataset, rank: int, world_size: int) -> None:
        n = len(dataset)  # type: ignore[arg-type]
        per_rank = -(-n // world_size)
        self.dataset = dataset
        self.items = [(i % n, i >= n) for i in range(rank, per_rank * world_size, world_size)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        source, is_padding = self.items[index]
        example = self.dataset[source]
        if is_padding:
            example = dict(example, labels=[IGNORE_INDEX] * len(example["labels"]))
        return example


def loss_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that carry a loss once labels are shifted (as causal LM losses do)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens the model processed (real tokens; packed rows count their full width)."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# --------------------------------------------------------------------------- one step


def accumulate_window(model: Any, backend: Backend, window: list[dict[str, torch.Tensor]]) -> float:
    """Forward/backward every micro-batch of one optimizer step; return this rank's
    share of the step loss (the all-rank sum is the step's token-mean loss).

    Each micro-batch's summed token loss is divided by the loss tokens of the
    whole window on all ranks, so accumulation and data parallelism give the
    gradient of one big batch, whatever the padding.
    """
    local = sum(loss_tokens(b) for b in window)
    global_tokens = max(1, int(backend.all_reduce_sum(local)))
    total = torch.zeros((), dtype=torch.float64)
    for i, batch in enumerate(window):
        batch = to_device(batch, backend.device)
        with backend.accumulate(boundary=i == len(window) - 1):
            with backend.autocast():
                out = model(**batch, num_items_in_batch=global_tokens)
            backend.backward(out.loss)
        total += out.loss.detach().to("cpu", torch.float64)
        # Free the logits (batch x seq x vocab) now, not after the next micro-batch's forward.
        del out, batch
    return float(total)


@torch.no_grad()
def evaluate(
    model: Any, backend: Backend, dataset: Dataset, batch_size: int, collate: Any
) -> float:
    """Token-mean loss over the whole eval set (all ranks)."""
    shard = _EvalShard(dataset, backend.rank, backend.world_size)
    loader = DataLoader(
        shard, batch_size=batch_size, shuffle=False, collate_fn=collate, generator=_private_rng()
    )
    was_training = model.training
    model.eval()
    loss_sum = 0.0
    tokens = 0
    try:
        for batch in loader:
            n = loss_tokens(batch)
            batch = to_device(batch, backend.device)
            with backend.autocast():
                # num_items_in_batch=1 turns the mean into a sum of token losses.
                out = model(**batch, num_items_in_batch=1)
            if n:
                loss_sum += float(out.loss)
            tokens += n
    finally:
        model.train(was_training)
    total_loss = backend.all_reduce_sum(loss_sum)
    total_tokens = backend.all_reduce_sum(tokens)
    return total_loss / total_tokens if total_tokens else float("nan")


# --------------------------------------------------------------------------- trainer


class Trainer:
    """One training run of `config` on `backend`; call `run()` once."""

    def __init__(
        self, config: FineTuneConfig, backend: Backend, options: TrainOptions | None = None
    ) -> None:
        self.config = config
        self.backend = backend
        self.options = options or TrainOptions()
        self.output_dir = Path(config.output_dir)
        self.reporter = ProgressReporter(0, world_size=backend.world_size)
        self.server: Any = None
        self.history: list[dict[str, Any]] = []
        self.eval_history: list[dict[str, Any]] = []
        self.tokens = 0
        self.train_seconds = 0.0
        self.resumed_from: str | None = None
        self.tracking = Tracking()
        self.tracking_ids: dict[str, str] = {}  # run ids of a resumed run's trackers

    # -- setup --------------------------------------------------------------

    def _start_server(self) -> None:
        if not (self.backend.is_main and self.options.serve_progress):
            return
        from finetune_runtime.progress.server import ProgressServer

        try:
            self.server = ProgressServer(
                self.reporter, host=self.options.progress_host, port=self.options.progress_port
            ).start()
        except (OSError, ValueError) as exc:
            log.warning("progress endpoint disabled: %s", exc)

    def _setup(self) -> None:
        from transformers import set_seed

        from finetune_runtime.data import make_collator
        from finetune_runtime.data.prepared import prepared_datasets
        from finetune_runtime.model import load as models

        config, backend = self.config, self.backend
        training = config.training
        check_installed(config)  # before minutes of loading, not after
        self.reporter.set_state("loading", "loading model and data")
        source = models.resolve_model_source(config.base_model, self.options.base_dir)
        self.tokenizer = models.load_tokenizer(config, source, self.options.base_dir)
        self.data = prepared_datasets(
            config,
            self.tokenizer,
            base_dir=self.options.base_dir,
            local_rank=backend.local_rank,
            barrier=backend.barrier,
        )
        self.collate = make_collator(self.tokenizer, config)
        self.plan: TrainingPlan = make_plan(
            training,
            dataset_rows=len(self.data.train),
            world_size=backend.world_size,
            max_steps=self.options.max_steps,
        )
        self.reporter.set_total_steps(self.plan.total_steps)

        # Seed after anything that may consume randomness unpredictably (building a builtin
        # model on first use), right before the random parts: new embeddings, adapter init.
        set_seed(config.seed)
        model = models.load_base_model(
            config, source, device=backend.device, precision=backend.options.precision
        )
        self.base_architecture = architecture_of(model.config)  # before embeddings grow
        models.fit_embeddings(model, self.tokenizer)
        self.kernels = apply_kernels(model, training.kernels, backend.device.type)
        if training.sample_packing:
            from finetune_runtime.train.attention import configure_model_for_packing

            attention = configure_model_for_packing(model, backend.device.type)
            log.info("sample packing: padding-free rows, attention %s", attention)
        model = models.apply_adapter(config, model, self.plan.total_steps)
        self.trainable, self.total_params = models.trainable_summary(model)
        optimizer = build_optimizer(training, model)
        scheduler = build_scheduler(
            training, optimizer, self.plan.total_steps, self.plan.warmup_steps
        )
        self.model, self.optimizer, self.scheduler = backend.prepare(model, optimizer, scheduler)
        self.sampler = seeded_sampler(self.data.train, backend, config.seed, shuffle=True)
        self.writer = CheckpointWriter(self.output_dir, backend, training.save_total_limit)

        self.step = self._resume()
        self.tracking = open_tracking(config, is_main=backend.is_main, resume_ids=self.tracking_ids)
        hook = models.adapter_step_hook(backend.unwrap(), self.step)
        if hook is not None:
            if config.deepspeed:
                raise ConfigError(
                    "adapter 'adalora' needs per-parameter gradients after each step, which "
                    "DeepSpeed does not expose: use another adapter or remove deepspeed"
                )
            self.optimizer.register_step_post_hook(hook)
        if backend.is_main:
            stats = self.data.stats
            log.info(
                "training %s (%s adapter): %d/%d parameters trainable (%.2f%%); %d train rows, "
                "%d eval rows; %d steps (%d per epoch), effective batch %d, precision %s, "
                "kernels %s, world size %d, device %s",
                config.base_model,
                config.adapter,
                self.trainable,
                self.total_params,
                100.0 * self.trainable / max(1, self.total_params),
                stats.train_rows,
                stats.eval_rows,
                self.plan.total_steps,
                self.plan.steps_per_epoch,
                training.batch_size * training.gradient_accumulation_steps * backend.world_size,
                backend.options.precision,
                self.kernels,
                backend.world_size,
                backend.device,
            )

    def _resume(self) -> int:
        training, options = self.config.training, self.options
        auto = training.auto_resume if options.resume is None else options.resume
        explicit = None
        if options.resume is not False:
            explicit = options.resume_from or training.resume_from_checkpoint
        path = agreed_resume(self.backend, self.output_dir, explicit, auto)
        if path is not None:
            guards.check_resume_config(path, self.config, self.options.resume_with_changes)
        if path is None:
            # Different dropout streams per rank; the same on every run with this seed.
            torch.manual_seed(self.config.seed + self.backend.rank)
            return 0
        state = self.backend.load(path)
        step = int(state["step"])
        plan = self.plan
        if (
            state.get("micro_batches_per_epoch") != plan.micro_batches_per_epoch
            or state.get("world_size") != self.backend.world_size
        ):
            log.warning(
                "%s was written with %s micro-batches per epoch on %s ranks, now %d on %d: the "
                "data order after resuming differs from an uninterrupted run",
                path,
                state.get("micro_batches_per_epoch"),
                state.get("world_size"),
                plan.micro_batches_per_epoch,
                self.backend.world_size,
            )
        if not load_rng(path, self.backend.rank):
            torch.manual_seed(self.config.seed + self.backend.rank + step)
        self.history = list(state.get("history", []))
        self.eval_history = list(state.get("eval_history", []))
        self.tokens = int(state.get("tokens", 0))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.resumed_from = str(path)
        self.tracking_ids = dict(state.get("tracking", {}))
        if self.backend.is_main:
            pos = plan.position(step)
            log.info(
                "resumed from %s: step %d, epoch %d, batch %d",
                path,
                step,
                pos.epoch,
                pos.batch_index,
            )
        return step

    # -- state ----------------------------------------------------------------

    def client_state(self) -> dict[str, Any]:
        pos = self.plan.position(self.step)
        return {
            "step": self.step,
            "epoch": pos.epoch,
            "batch_index": pos.batch_index,
            "epoch_progress": self.plan.epoch_progress(self.step),
            "total_steps": self.plan.total_steps,
            "micro_batches_per_epoch": self.plan.micro_batches_per_epoch,
            "world_size": self.backend.world_size,
            "tokens": self.tokens,
            "train_seconds": self.train_seconds,
            "history": self.history,
            "eval_history": self.eval_history,
            "tracking": self.tracking.run_ids(),
        }

    def _export(self, directory: Path, *, with_tokenizer: bool = True) -> None:
        """Write usable weights (adapter or full model) into `directory` (collective)."""
        from finetune_runtime.model.load import save_weights

        state = self.backend.export_state_dict()
        if not self.backend.is_main:
            return
        save_weights(
            self.backend.unwrap(),
            directory / self._weights_name(),
            self.tokenizer if with_tokenizer else None,
            state_dict=state,
        )

    def _identity(self) -> dict[str, Any]:
        """What the final weights belong to, checked by `finetune merge`."""
        return {
            "kind": self._weights_name(),
            "adapter": self.config.adapter,
            "base_model": self.config.base_model,
            "base_architecture": self.base_architecture,
        }

    def _weights_name(self) -> str:
        return contract.weights_dir_name(self.config.adapter)

    def save_checkpoint(self) -> Path:
        guards.check_weights_finite(self.backend, self.step)  # never save NaN/Inf weights
        self.reporter.set_state("saving", f"checkpoint at step {self.step}")
        state = self.client_state()
        # Full fine-tunes already keep every weight in the training state: do not write
        # the model twice. Adapters are small and worth having ready for `finetune merge`.
        adapter = self.config.adapter != "none"
        path = self.writer.save(
            self.step,
            state,
            export=self._export if adapter else None,
            text_files={
                "config.yaml": self.config.to_yaml(),
                "trainer_state.json": json.dumps(state, indent=2) + "\n",
            },
        )
        self.reporter.on_checkpoint(self.step, str(path))
        self.reporter.set_state("training")
        if self.backend.is_main:
            log.info("saved checkpoint %s", path)
        return path

    def run_eval(self) -> float | None:
        if self.data.eval is None:
            return None
        self.reporter.set_state("evaluating")
        batch_size = self.config.training.eval_batch_size or self.config.training.batch_size
        loss = evaluate(self.model, self.backend, self.data.eval, batch_size, self.collate)
        self.eval_history.append(
            {"step": self.step, "eval_loss": loss, "eval_perplexity": perplexity(loss)}
        )
        self.tracking.log(self.step, eval_metrics(loss))
        self.reporter.on_eval(self.step, loss)
        self.reporter.set_state("training")
        return loss

    # -- the loop ---------------------------------------------------------------

    def run(self) -> TrainResult:
        lock = None
        if self.backend.is_main:  # before any compute: a bad or busy output_dir fails now
            lock = guards.claim_output_dir(self.output_dir, self._weights_name())
        self._start_server()
        status = "failed"
        try:
            self._setup()
            with GracefulStop() as stop:
                stopped = self._train(stop)
            result = self._finish(stopped)
            status = "stopped" if stopped else "completed"
            return result
        except BaseException as exc:
            self.reporter.set_state("failed", str(exc)[:500] or type(exc).__name__)
            if isinstance(exc, DivergedError) and self.backend.is_main:
                _write_json_atomic(self.output_dir / SUMMARY_FILE, self.summary("diverged"))
            raise
        finally:
            self.tracking.close(status)
            if self.server is not None:
                self.server.stop()
            if lock is not None:
                lock.release()

    def _train(self, stop: GracefulStop) -> bool:
        backend, plan = self.backend, self.plan
        training = self.config.training
        display = StepDisplay(
            plan.total_steps, self.step, enabled=backend.is_main, bar=self.options.progress_bar
        )
        self.model.train()
        self.reporter.set_state("training")
        batches: Iterator[dict[str, torch.Tensor]] | None = None
        loaded_epoch = -1
        interval: list[float] = []
        # A resumed run already has its checkpoint (and maybe its eval) at this step.
        last_saved = self.step if self.resumed_from else -1
        last_eval = self.eval_history[-1]["step"] if self.eval_history else -1
        stopped = False
        started = time.monotonic()
        try:
            while self.step < plan.total_steps:
                pos = plan.position(self.step)
                if batches is None or pos.epoch != loaded_epoch:
                    batches = epoch_batches(
                        self.data.train,
                        self.sampler,
                        training.batch_size,
                        pos.epoch,
                        pos.batch_index,
                        self.collate,
                    )
                    loaded_epoch = pos.epoch
                window = [next(batches) for _ in range(plan.window_size(self.step))]
                tokens_local = sum(batch_tokens(b) for b in window)
                lr = float(self.scheduler.get_last_lr()[0])
                share = accumulate_window(self.model, backend, window)
                loss = backend.all_reduce_sum(share)
                guards.check_finite("the loss", loss, self.step + 1)  # before the update
                grad_norm = backend.step()
                self.step += 1
                if backend.options.precision != "fp16":  # fp16 loss scaling skips inf steps
                    guards.check_finite("the gradient norm", grad_norm, self.step)
                tokens = int(backend.all_reduce_sum(tokens_local))
                self.tokens += tokens
                self.history.append(
                    {"step": self.step, "loss": loss, "learning_rate": lr, "grad_norm": grad_norm}
                )
                epoch = plan.epoch_progress(self.step)
                self.reporter.on_step(
                    self.step, epoch=epoch, loss=loss, learning_rate=lr, tokens=tokens
                )
                interval.append(loss)
                display.advance(self.step, loss)
                if plan.should_log(self.step):
                    elapsed = self.train_seconds + time.monotonic() - started
                    mean_loss = sum(interval) / len(interval)
                    tokens_per_s = self.reporter.document().tokens_per_second
                    display.line(
                        format_metrics(
                            {
                                "step": f"{self.step}/{plan.total_steps}",
                                "epoch": epoch,
                                "loss": mean_loss,
                                "lr": lr,
                                "grad_norm": grad_norm,
                                "tokens_per_s": tokens_per_s,
                                "elapsed_s": elapsed,
                            }
                        )
                    )
                    self.tracking.log(
                        self.step,
                        {
                            "train/loss": mean_loss,
                            "train/learning_rate": lr,
                            "train/grad_norm": grad_norm,
                            "train/tokens_per_second": tokens_per_s,
                            "train/epoch": epoch,
                        },
                    )
                    interval.clear()
                if plan.should_eval(self.step) and self.data.eval is not None:
                    eval_loss = self.run_eval()
                    last_eval = self.step
                    display.line(eval_line(self.step, eval_loss))
                # Every rank must agree before anyone starts a (collective) save.
                stop_now = backend.all_reduce_sum(1.0 if stop.requested else 0.0) > 0
                if plan.should_save(self.step) or stop_now:
                    self.train_seconds += time.monotonic() - started
                    started = time.monotonic()
                    self.save_checkpoint()
                    last_saved = self.step
                if stop_now:
                    stopped = True
                    display.line(
                        f"stopped by {stop.signal_name or 'a signal on another rank'} at step "
                        f"{self.step}/{plan.total_steps}; checkpoint saved, rerun to resume"
                    )
                    break
            self.train_seconds += time.monotonic() - started
            if not stopped:
                if self.data.eval is not None and last_eval != self.step:
                    eval_loss = self.run_eval()
                    display.line(eval_line(self.step, eval_loss))
                if last_saved != self.step:
                    self.save_checkpoint()
        finally:
            display.close()
        return stopped

    # -- outputs ----------------------------------------------------------------

    def summary(self, status: bool | str) -> dict[str, Any]:
        """`status`: True (stopped), False (completed) or a word such as "diverged"."""
        losses = [h["loss"] for h in self.history]
        plan = self.plan
        if isinstance(status, bool):
            status = "stopped" if status else "completed"
        return {
            "status": status,
            "base_model": self.config.base_model,
            "adapter": self.config.adapter,
            "steps": self.step,
            "total_steps": plan.total_steps,
            "epochs": plan.epoch_progress(self.step),
            "world_size": self.backend.world_size,
            "precision": self.backend.options.precision,
            "kernels": self.kernels,
            "effective_batch_size": self.config.training.batch_size
            * self.config.training.gradient_accumulation_steps
            * self.backend.world_size,
            "trainable_parameters": self.trainable,
            "total_parameters": self.total_params,
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "final_eval_loss": self.eval_history[-1]["eval_loss"] if self.eval_history else None,
            "final_eval_perplexity": (
                self.eval_history[-1].get("eval_perplexity") if self.eval_history else None
            ),
            "tokens": self.tokens,
            "train_seconds": round(self.train_seconds, 3),
            "tokens_per_second": self.tokens / self.train_seconds if self.train_seconds else None,
            "resumed_from": self.resumed_from,
            "data": self.data.stats.as_dict(),
            "losses": self.history,
            "eval_losses": self.eval_history,
        }

    def _finish(self, stopped: bool) -> TrainResult:
        weights_dir = None
        summary = self.summary(stopped)
        if not stopped:
            self.reporter.set_state("saving", "writing final weights")
            weights_dir = self._write_final_weights()
        if self.backend.is_main:
            _write_json_atomic(self.output_dir / SUMMARY_FILE, summary)
        self.backend.barrier()
        self.reporter.set_state(
            "completed" if not stopped else "saving",
            None if not stopped else "stopped on request after checkpointing",
        )
        return TrainResult(
            self.output_dir,
            self.step,
            self.plan.total_steps,
            stopped,
            weights_dir,
            summary,
            sample=next(iter(_samples(self.data.eval, 1) + _samples(self.data.train, 1)), None),
            train_samples=_samples(self.data.train, TRAIN_SAMPLES),
            held_out=next(iter(_samples(self.data.eval, 1)), None),
        )

    def _write_final_weights(self) -> Path:
        """output_dir/adapter (or model), replaced atomically (collective)."""
        tmp = self.output_dir / f".final.tmp-{os.getpid()}"
        final = self.output_dir / self._weights_name()
        if self.backend.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.backend.barrier()
        try:
            self._export(tmp)
            if self.backend.is_main:
                guards.check_not_foreign(final)  # something appeared there while we trained
                write_manifest(tmp / final.name, self._identity())
                replace_dir(tmp / final.name, final)
                log.info("wrote %s", final)
        except OSError as exc:
            raise CheckpointError(
                f"cannot write {final}: {exc.strerror or exc}; the last checkpoint is kept "
                "(`finetune merge --adapter checkpoint-N` uses it)"
            ) from exc
        finally:
            if self.backend.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
        self.backend.barrier()
        return final


def _samples(dataset: TokenizedDataset | None, count: int) -> list[Sample]:
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


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def train(config: FineTuneConfig, options: TrainOptions | None = None) -> TrainResult:
    """Train `config` on the backend the environment calls for (local, DDP or DeepSpeed)."""
    base_dir = options.base_dir if options is not None else None
    with closing(create_backend(config, base_dir=base_dir)) as backend:
        return Trainer(config, backend, options).run()
