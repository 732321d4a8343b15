"""Rank-0 progress bookkeeping: the numbers behind `/progress` and `/metrics`.

The training loop calls `on_step`/`on_eval`/`on_checkpoint`; the progress server
(and anything else) reads `document()`. Rates are smoothed over the last few
optimizer steps so that one slow step (a checkpoint save, an eval) does not make
the ETA jump, and warm-up before the first step does not count as training time
once enough steps have been seen.

Metrics live in the reporter's own `CollectorRegistry`, never the process-global
one, so several reporters (tests, a restarted trainer) never collide.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client import Enum as EnumMetric

from finetune_runtime.contract import run_identity
from finetune_runtime.progress.document import CheckpointInfo, ProgressDocument, TrainingState

STATES: tuple[str, ...] = get_args(TrainingState)
DEFAULT_WINDOW = 20


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _finite(value: float | None) -> float | None:
    """JSON (and Kubernetes status) cannot carry NaN/inf: report them as unknown."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


class _Metrics:
    """The Prometheus side of a reporter, in a private registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, registry=registry)

        self.train_loss = gauge("finetune_train_loss", "Training loss of the last optimizer step.")
        self.eval_loss = gauge("finetune_eval_loss", "Loss of the last evaluation.")
        self.learning_rate = gauge("finetune_learning_rate", "Learning rate of the last step.")
        self.step = gauge("finetune_step", "Optimizer steps completed.")
        self.total_steps = gauge("finetune_total_steps", "Optimizer steps planned in total.")
        self.epoch = gauge("finetune_epoch", "Fractional epoch reached.")
        self.tokens_per_second = gauge(
            "finetune_tokens_per_second", "Tokens/s over recent steps, all ranks together."
        )
        self.progress_ratio = gauge("finetune_progress_ratio", "step / total_steps, 0-1.")
        self.eta_seconds = gauge("finetune_eta_seconds", "Estimated seconds until the last step.")
        self.world_size = gauge("finetune_world_size", "Number of training processes.")
        self.last_checkpoint_step = gauge(
            "finetune_last_checkpoint_step", "Step of the newest saved checkpoint."
        )
        self.tokens = Counter(
            "finetune_tokens", "Tokens processed, all ranks together.", registry=registry
        )
        self.checkpoints = Counter(
            "finetune_checkpoints", "Checkpoints saved by this process.", registry=registry
        )
        self.state = EnumMetric(
            "finetune_state", "Training state.", states=list(STATES), registry=registry
        )
        for unknown in (self.train_loss, self.eval_loss, self.learning_rate, self.eta_seconds):
            unknown.set(math.nan)


class ProgressReporter:
    """Thread-safe progress state of one training run (rank 0's view).

    The document names the FineTuneJob and attempt from `env` (the pod's environment, by
    default), so `/progress` and the logs say which gang they describe.

    `clock` is a monotonic seconds source used for rates and the ETA; `now`
    gives the wall-clock timestamps shown to users. Both are injectable so the
    arithmetic can be tested without sleeping.
    """

    def __init__(
        self,
        total_steps: int,
        *,
        world_size: int = 1,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = _utcnow,
        window: int = DEFAULT_WINDOW,
        registry: CollectorRegistry | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1 step")
        self._clock = clock
        self._now = now
        self._lock = threading.Lock()
        self.registry = registry if registry is not None else CollectorRegistry()
        self._metrics = _Metrics(self.registry)
        # (monotonic time, step, cumulative tokens); the oldest entry is the rate baseline.
        self._samples: deque[tuple[float, int, int]] = deque(maxlen=window + 1)
        self._anchor = clock()
        self._tokens = 0
        job_name, attempt = run_identity(env)  # the operator's pod env; os.environ by default
        self._doc = ProgressDocument(
            world_size=world_size,
            progress=0.0,
            updated_at=now(),
            job_name=job_name,
            attempt=attempt,
        )
        self._metrics.world_size.set(world_size)
        self._metrics.state.state(self._doc.state)
        self.set_total_steps(total_steps)

    # -- writers -----------------------------------------------------------

    def set_state(self, state: TrainingState, message: str | None = None) -> None:
        """Move to `state`; entering "training" restarts the rate baseline."""
        if state not in STATES:
            raise ValueError(f"unknown training state {state!r}; expected one of {STATES}")
        with self._lock:
            if state == "training" and self._doc.state != "training":
                self._anchor = self._clock()
            self._doc.state = state
            self._doc.message = message
            if state == "completed":
                self._doc.eta_seconds = 0.0
                self._metrics.eta_seconds.set(0.0)
            self._touch()
            self._metrics.state.state(state)

    def set_total_steps(self, total_steps: int) -> None:
        if total_steps < 0:
            raise ValueError(f"total_steps must be >= 0, got {total_steps}")
        with self._lock:
            self._doc.total_steps = total_steps
            self._metrics.total_steps.set(total_steps)
            if len(self._samples) > 1:
                self._update_rates()
            self._update_progress()
            self._touch()

    def on_step(
        self, step: int, *, epoch: float, loss: float, learning_rate: float, tokens: int
    ) -> None:
        """Record optimizer step `step` (1-based); `tokens` counts all ranks for this step."""
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        with self._lock:
            t = self._clock()
            if self._samples and step <= self._samples[-1][1]:
                # Steps went backwards (a new attempt resumed from an older checkpoint):
                # old rates are void and this step's duration is unknown.
                self._samples.clear()
            elif not self._samples:
                # Baseline: the previous step ended when training (re)started.
                self._samples.append((self._anchor, step - 1, self._tokens))
            self._tokens += tokens
            self._samples.append((t, step, self._tokens))

            doc = self._doc
            doc.step = step
            doc.epoch = float(epoch)
            doc.loss = _finite(loss)
            doc.learning_rate = _finite(learning_rate)
            self._update_rates()
            self._update_progress()
            self._touch()

            m = self._metrics
            m.step.set(step)
            m.epoch.set(epoch)
            m.train_loss.set(loss)
            m.learning_rate.set(learning_rate)
            m.tokens.inc(tokens)

    def on_eval(self, step: int, eval_loss: float) -> None:
        with self._lock:
            self._doc.eval_loss = _finite(eval_loss)
            self._metrics.eval_loss.set(eval_loss)
            self._touch()

    def on_checkpoint(self, step: int, path: str) -> None:
        with self._lock:
            self._doc.last_checkpoint = CheckpointInfo(step=step, path=str(path), time=self._now())
            self._metrics.checkpoints.inc()
            self._metrics.last_checkpoint_step.set(step)
            self._touch()

    # -- readers -----------------------------------------------------------

    def document(self) -> ProgressDocument:
        """A consistent snapshot, safe to serialise while training goes on."""
        with self._lock:
            return self._doc.model_copy(deep=True)

    @property
    def tokens_total(self) -> int:
        with self._lock:
            return self._tokens

    # -- internals (caller holds the lock) -----------------------------------

    def _touch(self) -> None:
        self._doc.updated_at = self._now()

    def _update_rates(self) -> None:
        t0, step0, tokens0 = self._samples[0]
        t1, step1, tokens1 = self._samples[-1]
        elapsed = t1 - t0
        if elapsed <= 0 or step1 <= step0:
            return
        tps = (tokens1 - tokens0) / elapsed
        self._doc.tokens_per_second = tps
        self._metrics.tokens_per_second.set(tps)
        seconds_per_step = elapsed / (step1 - step0)
        if self._doc.total_steps:
            eta = max(self._doc.total_steps - step1, 0) * seconds_per_step
            self._doc.eta_seconds = eta
            self._metrics.eta_seconds.set(eta)

    def _update_progress(self) -> None:
        total = self._doc.total_steps
        ratio = min(self._doc.step / total, 1.0) if total else 0.0
        self._doc.progress = round(ratio * 100.0, 2)
        self._metrics.progress_ratio.set(ratio)
