"""Prometheus metrics of the serving API, in a registry of their own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "finetune_serve_requests", "API requests answered", ["endpoint", "code"], registry=r
        )
        self.prompt_tokens = Counter(
            "finetune_serve_prompt_tokens", "Prompt tokens processed", registry=r
        )
        self.generation_tokens = Counter(
            "finetune_serve_generation_tokens", "Tokens generated", registry=r
        )
        self.cancelled = Counter(
            "finetune_serve_cancelled_sequences",
            "Sequences stopped early because their client went away",
            registry=r,
        )
        self.latency = Histogram(
            "finetune_serve_request_latency_seconds",
            "Request latency, arrival to last token",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "finetune_serve_time_to_first_token_seconds",
            "Arrival to first generated token",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "finetune_serve_queue_depth", "Sequences waiting for a batch slot", registry=r
        )
        self.running = Gauge(
            "finetune_serve_running_sequences", "Sequences in the running batch", registry=r
        )
