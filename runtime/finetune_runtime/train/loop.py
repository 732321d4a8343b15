"""The training loop: data → accumulated gradients → optimizer steps, with eval,
checkpoints, resume, progress reporting and graceful stop.

`Trainer` is the recipe: `_setup` (train.setup: data, plan, model, optimiser; then
train.resume), `_train` (the step loop, top to bottom), `save_checkpoint`
(train.checkpoint, train.export) and `_finish` (final weights, train.summary).
Written once against `Backend` (local, DDP, DeepSpeed). Every rank runs the
same code; rank 0 alone logs, serves progress and writes files other than the
collective checkpoint parts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from finetune_runtime.config import FineTuneConfig
from finetune_runtime.errors import DivergedError
from finetune_runtime.progress.console import StepDisplay, eval_line, format_metrics, perplexity
from finetune_runtime.progress.reporting import ProgressReporter
from finetune_runtime.progress.tracking import (
    Tracking,
    check_installed,
    eval_metrics,
    open_tracking,
)
from finetune_runtime.train import guards, setup
from finetune_runtime.train.backends.base import Backend
from finetune_runtime.train.backends.factory import closing, create_backend
from finetune_runtime.train.batches import TrainBatches, batch_tokens, seeded_sampler
from finetune_runtime.train.checkpoint import CheckpointWriter
from finetune_runtime.train.export import (
    export_weights,
    identity,
    weights_name,
    write_final_weights,
)
from finetune_runtime.train.options import TrainOptions
from finetune_runtime.train.resume import RunState, resume
from finetune_runtime.train.signals import GracefulStop
from finetune_runtime.train.step import accumulate_window, evaluate
from finetune_runtime.train.summary import (
    SUMMARY_FILE,
    RunFacts,
    TrainResult,
    result,
    summarize,
    write_json_atomic,
)

__all__ = ["TrainOptions", "TrainResult", "Trainer", "train"]

log = logging.getLogger(__name__)


class Trainer:
    """One training run of `config` on `backend`; call `run()` once."""

    def __init__(
        self, config: FineTuneConfig, backend: Backend, options: TrainOptions | None = None
    ) -> None:
        self.config = config
        self.backend = backend
        self.options = options or TrainOptions()
        self.output_dir = Path(config.output_dir)
        self.weights_name = weights_name(config)
        self.reporter = ProgressReporter(0, world_size=backend.world_size)
        self.state = RunState()
        self.tracking = Tracking()
        self.server: Any = None

    def run(self) -> TrainResult:
        lock = None
        if self.backend.is_main:  # before any compute: a bad or busy output_dir fails now
            lock = guards.claim_output_dir(self.output_dir, self.weights_name)
        self._start_server()
        status = "failed"
        try:
            self._setup()
            with GracefulStop() as stop:
                stopped = self._train(stop)
            outcome = self._finish(stopped)
            status = "stopped" if stopped else "completed"
            return outcome
        except BaseException as exc:
            self.reporter.set_state("failed", str(exc)[:500] or type(exc).__name__)
            if isinstance(exc, DivergedError) and self.backend.is_main:
                write_json_atomic(self.output_dir / SUMMARY_FILE, self.summary("diverged"))
            raise
        finally:
            self.tracking.close(status)
            if self.server is not None:
                self.server.stop()
            if lock is not None:
                lock.release()

    # -- setup ------------------------------------------------------------------

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
        """Data, plan, model and optimiser (train.setup), then resume (train.resume)."""
        config, backend, options = self.config, self.backend, self.options
        check_installed(config)  # before minutes of loading, not after
        self.reporter.set_state("loading", "loading model and data")
        data = setup.load_data(config, backend, options)
        self.tokenizer, self.data, self.collate = data.tokenizer, data.bundle, data.collate
        self.plan = setup.plan_run(config.training, backend, data, options)
        self.reporter.set_total_steps(self.plan.total_steps)
        model, model_facts = setup.load_model(config, backend, data, self.plan)
        optimizer, scheduler = setup.optimiser(config.training, model, self.plan)
        self.model, self.optimizer, self.scheduler = backend.prepare(model, optimizer, scheduler)
        self.sampler = seeded_sampler(self.data.train, backend, config.seed, shuffle=True)
        self.writer = CheckpointWriter(self.output_dir, backend, config.training.save_total_limit)
        self.facts = RunFacts(config, backend, self.plan, model_facts, self.data)
        self.state = resume(config, backend, options, self.plan)
        self.tracking = open_tracking(
            config, is_main=backend.is_main, resume_ids=self.state.tracking_ids
        )
        setup.register_adapter_hook(config, backend, self.optimizer, self.state.step)
        if backend.is_main:
            setup.log_run(config, backend, self.plan, self.data, model_facts)

    # -- the loop ---------------------------------------------------------------

    def _train(self, stop: GracefulStop) -> bool:
        """Step to the end of the plan; True when a stop signal ended it (checkpointed)."""
        backend, plan, state = self.backend, self.plan, self.state
        batches = TrainBatches(
            self.data.train, self.sampler, self.config.training.batch_size, self.collate
        )
        # A resumed run already has its checkpoint (and maybe its eval) at this step.
        last_saved = state.step if state.resumed_from else -1
        last_eval = state.eval_history[-1]["step"] if state.eval_history else -1
        self.display = StepDisplay(
            plan.total_steps, state.step, enabled=backend.is_main, bar=self.options.progress_bar
        )
        self.interval: list[float] = []  # step losses since the last log line
        self.model.train()
        self.reporter.set_state("training")
        self.clock = time.monotonic()
        with contextlib.closing(self.display):
            while state.step < plan.total_steps:
                window = batches.window(plan, state.step)
                tokens = sum(batch_tokens(b) for b in window)
                lr = float(self.scheduler.get_last_lr()[0])
                loss = backend.all_reduce_sum(accumulate_window(self.model, backend, window))
                guards.check_finite("the loss", loss, state.step + 1)  # before the update
                grad_norm = backend.step()
                state.step += 1
                if backend.options.precision != "fp16":  # fp16 loss scaling skips inf steps
                    guards.check_finite("the gradient norm", grad_norm, state.step)
                self._record(loss, lr, grad_norm, int(backend.all_reduce_sum(tokens)))
                if plan.should_eval(state.step) and self.data.eval is not None:
                    self._evaluate()
                    last_eval = state.step
                # Every rank must agree before anyone starts a (collective) save.
                stop_now = backend.all_reduce_sum(1.0 if stop.requested else 0.0) > 0
                if plan.should_save(state.step) or stop_now:
                    self._lap()
                    self.save_checkpoint()
                    last_saved = state.step
                if stop_now:
                    self._lap()
                    self.display.line(
                        f"stopped by {stop.signal_name or 'a signal on another rank'} at step "
                        f"{state.step}/{plan.total_steps}; checkpoint saved, rerun to resume"
                    )
                    return True
            self._lap()
            if self.data.eval is not None and last_eval != state.step:
                self._evaluate()
            if last_saved != state.step:
                self.save_checkpoint()
        return False

    def _lap(self) -> None:
        """Add the time since the last lap to the run's training seconds."""
        now = time.monotonic()
        self.state.train_seconds += now - self.clock
        self.clock = now

    def _record(self, loss: float, lr: float, grad_norm: float | None, tokens: int) -> None:
        """Count and report the step just taken; log the interval's mean loss when due."""
        state, plan = self.state, self.plan
        state.tokens += tokens
        state.history.append(
            {"step": state.step, "loss": loss, "learning_rate": lr, "grad_norm": grad_norm}
        )
        epoch = plan.epoch_progress(state.step)
        self.reporter.on_step(state.step, epoch=epoch, loss=loss, learning_rate=lr, tokens=tokens)
        self.interval.append(loss)
        self.display.advance(state.step, loss)
        if plan.should_log(state.step):
            self._log(epoch, lr, grad_norm)

    def _log(self, epoch: float, lr: float, grad_norm: float | None) -> None:
        step = self.state.step
        elapsed = self.state.train_seconds + time.monotonic() - self.clock
        mean_loss = sum(self.interval) / len(self.interval)
        tokens_per_s = self.reporter.document().tokens_per_second
        metrics = {
            "step": f"{step}/{self.plan.total_steps}",
            "epoch": epoch,
            "loss": mean_loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": tokens_per_s,
            "elapsed_s": elapsed,
        }
        self.display.line(format_metrics(metrics))
        tracked = {
            "train/loss": mean_loss,
            "train/learning_rate": lr,
            "train/grad_norm": grad_norm,
            "train/tokens_per_second": tokens_per_s,
            "train/epoch": epoch,
        }
        self.tracking.log(step, tracked)
        self.interval.clear()

    def _evaluate(self) -> None:
        """Token-mean loss over the eval split (all ranks), recorded and reported."""
        assert self.data.eval is not None
        step, training = self.state.step, self.config.training
        self.reporter.set_state("evaluating")
        batch_size = training.eval_batch_size or training.batch_size
        loss = evaluate(self.model, self.backend, self.data.eval, batch_size, self.collate)
        self.state.eval_history.append(
            {"step": step, "eval_loss": loss, "eval_perplexity": perplexity(loss)}
        )
        self.tracking.log(step, eval_metrics(loss))
        self.reporter.on_eval(step, loss)
        self.reporter.set_state("training")
        self.display.line(eval_line(step, loss))

    # -- checkpoints and outputs ------------------------------------------------

    def save_checkpoint(self) -> Path:
        step = self.state.step
        guards.check_weights_finite(self.backend, step)  # never save NaN/Inf weights
        self.reporter.set_state("saving", f"checkpoint at step {step}")
        state = self.state.client_state(self.plan, self.backend.world_size, self.tracking.run_ids())
        # Full fine-tunes already keep every weight in the training state: do not write
        # the model twice. Adapters are small and worth having ready for `finetune merge`.
        adapter = self.config.adapter != "none"
        path = self.writer.save(
            step,
            state,
            export=self._export if adapter else None,
            text_files={
                "config.yaml": self.config.to_yaml(),
                "trainer_state.json": json.dumps(state, indent=2) + "\n",
            },
        )
        self.reporter.on_checkpoint(step, str(path))
        self.reporter.set_state("training")
        if self.backend.is_main:
            log.info("saved checkpoint %s", path)
        return path

    def _export(self, directory: Path) -> None:
        export_weights(self.backend, directory, self.weights_name, self.tokenizer)

    def summary(self, status: str) -> dict[str, Any]:
        """`status`: completed, stopped or diverged."""
        return summarize(status, self.facts, self.state)

    def _finish(self, stopped: bool) -> TrainResult:
        weights_dir = None
        summary = self.summary("stopped" if stopped else "completed")
        if not stopped:
            self.reporter.set_state("saving", "writing final weights")
            weights_dir = write_final_weights(
                self.backend,
                self.output_dir,
                self.weights_name,
                self._export,
                identity(self.config, self.facts.model.base_architecture),
            )
        if self.backend.is_main:
            write_json_atomic(self.output_dir / SUMMARY_FILE, summary)
        self.backend.barrier()
        self.reporter.set_state(
            "completed" if not stopped else "saving",
            None if not stopped else "stopped on request after checkpointing",
        )
        return result(self.facts, self.state, summary, stopped, weights_dir)


def train(config: FineTuneConfig, options: TrainOptions | None = None) -> TrainResult:
    """Train `config` on the backend the environment calls for (local, DDP or DeepSpeed)."""
    base_dir = options.base_dir if options is not None else None
    with closing(create_backend(config, base_dir=base_dir)) as backend:
        return Trainer(config, backend, options).run()
