"""The operator's Prometheus metrics, in a registry of its own."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from finetune_operator.status import PHASES

JobKey = tuple[str, str]  # (namespace, name)


class Metrics:
    """Job phases, transitions, reconcile latency and per-job training gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs = Gauge("finetune_operator_jobs", "FineTuneJobs by phase.", ["phase"], registry=r)
        self.created = Counter(
            "finetune_operator_jobs_created", "Jobs whose first gang was created.", registry=r
        )
        self.succeeded = Counter(
            "finetune_operator_jobs_succeeded", "Jobs that succeeded.", registry=r
        )
        self.failed = Counter(
            "finetune_operator_jobs_failed", "Jobs that failed, by reason.", ["reason"], registry=r
        )
        self.restarted = Counter(
            "finetune_operator_jobs_restarted", "Gang restarts after a worker failed.", registry=r
        )
        self.reconcile_seconds = Histogram(
            "finetune_operator_reconcile_duration_seconds",
            "Time for one reconcile cycle of one job (API calls included).",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.reconcile_errors = Counter(
            "finetune_operator_reconcile_errors", "Reconcile cycles that raised.", registry=r
        )
        labels = ["namespace", "job"]
        self.loss = Gauge("finetune_job_loss", "Latest training loss.", labels, registry=r)
        self.step = Gauge("finetune_job_step", "Latest optimizer step.", labels, registry=r)
        self.tokens = Gauge(
            "finetune_job_tokens_per_second", "Training throughput.", labels, registry=r
        )
        self.progress = Gauge(
            "finetune_job_progress_percent", "Percent of total steps done.", labels, registry=r
        )
        self._phases: dict[JobKey, str] = {}
        self._lock = threading.Lock()
        for phase in PHASES:
            self.jobs.labels(phase=phase).set(0)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)

    def observe(self, key: JobKey, phase: str | None, progress: dict[str, Any] | None) -> None:
        with self._lock:
            if phase:
                self._phases[key] = phase
            self._publish_phases()
        if progress:
            for gauge, field in (
                (self.loss, "loss"),
                (self.step, "step"),
                (self.tokens, "tokensPerSecond"),
                (self.progress, "percent"),
            ):
                if isinstance(progress.get(field), int | float):
                    gauge.labels(namespace=key[0], job=key[1]).set(progress[field])

    def transition(self, reason: str, failed_reason: str | None = None) -> None:
        """Count an event the reconciler emitted (events are emitted on transitions only)."""
        if reason == "Created":
            self.created.inc()
        elif reason == "Restarting":
            self.restarted.inc()
        elif reason == "Succeeded":
            self.succeeded.inc()
        elif failed_reason is not None:
            self.failed.labels(reason=failed_reason).inc()

    def forget(self, key: JobKey) -> None:
        with self._lock:
            self._phases.pop(key, None)
            self._publish_phases()
        for gauge in (self.loss, self.step, self.tokens, self.progress):
            with contextlib.suppress(KeyError):
                gauge.remove(key[0], key[1])

    def _publish_phases(self) -> None:
        counts = dict.fromkeys(PHASES, 0)
        for phase in self._phases.values():
            counts[phase] = counts.get(phase, 0) + 1
        for phase, count in counts.items():
            self.jobs.labels(phase=phase).set(count)
