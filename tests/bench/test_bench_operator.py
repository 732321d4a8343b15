"""The operator bench at tiny scale on the real control plane (tests/kubeharness): ours alone,
and beside Kubeflow's training-operator when `make kube-peers` has built it. Sanity of the
numbers only; tests never assert on wall-clock thresholds."""

from __future__ import annotations

import pytest

from bench.operator_peer import PEER_BINARY, run_scale

pytestmark = pytest.mark.slow


def check(side: dict, jobs: int) -> None:
    assert side["pods_created"]["complete"] and side["running"]["complete"], side
    assert 0 < side["pods_created"]["p50_s"] <= side["running"]["p50_s"]
    assert side["pods_created"]["p50_s"] <= side["pods_created"]["p99_s"]
    assert side["requests_per_job"] > 0 and side["requests"] >= jobs
    assert side["rss_idle_kib"] > 0 and side["rss_kib"] > 0 and side["cpu_s"] >= 0


def test_our_operator_at_tiny_scale_on_a_real_control_plane():
    result = run_scale(3, resync=2.0, timeout=180.0, nodes=2, peer=False)
    assert result["jobs"] == 3 and "peer" not in result
    check(result["ours"], 3)


@pytest.mark.skipif(
    not PEER_BINARY.exists(), reason="the peer is built only by `make kube-peers` (make bench)"
)
def test_both_operators_side_by_side():
    result = run_scale(2, resync=2.0, timeout=180.0, nodes=2)
    check(result["ours"], 2)
    check(result["peer"], 2)
