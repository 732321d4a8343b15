"""The serving bench's arithmetic: queued latencies of a one-at-a-time server, paired ratios."""

from __future__ import annotations

import pytest

from bench.serve_bench import headline, queued_latencies, summarize


def test_one_client_waits_only_for_itself() -> None:
    assert queued_latencies([1.0, 2.0, 3.0], 1) == [1.0, 2.0, 3.0]


def test_many_clients_queue_behind_each_other() -> None:
    # three clients send at once; the server answers them in order
    assert queued_latencies([1.0, 1.0, 1.0], 3) == [1.0, 2.0, 3.0]
    # client 0's second request is sent after its first answer (t=1) and starts at t=2
    assert queued_latencies([1.0, 1.0, 1.0], 2) == [1.0, 2.0, 2.0]


def test_summary_pairs_rounds_and_feeds_the_headline() -> None:
    def serve(tokens_per_s: float) -> dict:
        return {"tokens": 100, "wall_s": 100 / tokens_per_s, "cpu_s": 1.0, "latency_s": [0.5, 1.5]}

    seq = {"tokens": 100, "wall_s": 10.0, "cpu_s": 2.0, "service_s": [0.1] * 4}
    rounds = [
        {"sequential": seq, "serve_1": serve(10), "serve_8": serve(20), "serve_32": serve(40)},
        {"sequential": seq, "serve_1": serve(10), "serve_8": serve(30), "serve_32": serve(60)},
    ]
    rows = summarize({"rounds": rounds})["rows"]
    assert rows[32]["ratio"] == pytest.approx(5.0) and rows[32]["ratio_runs"] == [4.0, 6.0]
    assert rows[32]["cpu_per_token_ratio"] == pytest.approx(0.5)
    assert rows[32]["serve_p99_ms"] == pytest.approx(1500)
    assert headline({"rows": rows}) == {
        "serve_tokens_per_s_ratio_vs_sequential_generate_32_clients": 5.0,
        "serve_p99_ms_32_clients": 1500.0,
    }
