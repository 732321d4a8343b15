"""Leader election: the pure Lease decision, and the elector's Lease calls against the real
apiserver (tests/kubeharness). The failover of two real operator replicas is in
test_operator_kube_leader.py."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import kubernetes
import pytest
from kubeharness.cluster import Cluster

from finetune_operator.leader import LeaseElector, LeaseTiming, decide, lease_spec, micro_time

pytestmark = pytest.mark.slow

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
CONFIG = {
    "base_model": "builtin:tiny-llama",
    "datasets": [{"path": "train.jsonl"}],
    "training": {"max_steps": 20},
}


def held(by: str, renewed: datetime, duration: int = 15) -> dict:
    return {
        "spec": {
            "holderIdentity": by,
            "renewTime": micro_time(renewed),
            "leaseDurationSeconds": duration,
        }
    }


# ------------------------------------------------------------------------------- pure


def test_leader_decision_table():
    assert decide(None, "a", T0) == "create"
    assert decide(held("a", T0), "a", T0 + timedelta(seconds=60)) == "renew"
    assert decide(held("b", T0), "a", T0 + timedelta(seconds=14)) == "wait"
    assert decide(held("b", T0), "a", T0 + timedelta(seconds=15)) == "take"
    released = {"spec": {"leaseDurationSeconds": 1, "renewTime": micro_time(T0)}}
    assert decide(released, "a", T0) == "take"


def test_leader_lease_spec_counts_transitions_and_keeps_acquire_time():
    timing = LeaseTiming.for_duration(15)
    first = lease_spec(None, "a", T0, "create", timing)
    assert first["holderIdentity"] == "a" and first["leaseTransitions"] == 0
    later = T0 + timedelta(seconds=5)
    renewed = lease_spec({"spec": first}, "a", later, "renew", timing)
    assert renewed["acquireTime"] == first["acquireTime"]
    assert renewed["renewTime"] == micro_time(later)
    taken = lease_spec({"spec": renewed}, "b", later, "take", timing)
    assert taken["leaseTransitions"] == 1 and taken["acquireTime"] == micro_time(later)
    assert timing.renew_deadline < timing.duration


# --------------------------------------------------------------- elector over the API


def coordination(cluster: Cluster) -> kubernetes.client.CustomObjectsApi:
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(str(cluster.kubeconfig), client_configuration=config)
    return kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(config))


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def test_leader_only_one_candidate_wins_and_a_standby_takes_over(
    cluster: Cluster, kube_namespace: str
):
    api, clock = coordination(cluster), Clock()
    timing = LeaseTiming.for_duration(15)
    a = LeaseElector(api, kube_namespace, "op", "a", timing, clock)
    b = LeaseElector(api, kube_namespace, "op", "b", timing, clock)
    assert a.try_once() is True
    assert b.try_once() is False
    clock.now += timedelta(seconds=10)
    assert a.try_once() is True  # renewed
    clock.now += timedelta(seconds=14)
    assert b.try_once() is False  # a renewed 14 s ago
    clock.now += timedelta(seconds=1)  # a is gone (no renewal for 15 s)
    assert b.try_once() is True
    assert a.try_once() is False  # a came back: it is a standby now
    b.release()
    assert a.try_once() is True  # released: no need to wait for the expiry


def test_leader_concurrent_takeover_has_exactly_one_winner(cluster: Cluster, kube_namespace: str):
    """Both read the same expired Lease; the resourceVersion precondition lets one write."""
    api, clock = coordination(cluster), Clock()
    timing = LeaseTiming.for_duration(15)
    LeaseElector(api, kube_namespace, "op", "old", timing, clock).try_once()
    clock.now += timedelta(seconds=20)
    candidates = [LeaseElector(api, kube_namespace, "op", f"c{i}", timing, clock) for i in range(4)]
    barrier = threading.Barrier(len(candidates))
    results: list[bool] = []

    def attempt(elector: LeaseElector) -> None:
        barrier.wait()
        results.append(elector.try_once())

    threads = [threading.Thread(target=attempt, args=(c,)) for c in candidates]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results.count(True) == 1, results


def test_leader_that_cannot_renew_gives_up_before_its_lease_expires(
    cluster: Cluster, kube_namespace: str
):
    api = coordination(cluster)
    timing = LeaseTiming(duration=1.0, renew_deadline=0.3, retry=0.05)
    a = LeaseElector(api, kube_namespace, "op", "a", timing)
    assert a.try_once() is True
    # Another replica took the Lease (seen from a clock far ahead, a's Lease had expired).
    ahead = LeaseElector(
        api, kube_namespace, "op", "b", timing, lambda: datetime.now(UTC) + timedelta(hours=1)
    )
    assert ahead.try_once() is True
    lost, stop, called = threading.Event(), threading.Event(), threading.Event()
    keeper = threading.Thread(target=a.keep, args=(lost, stop, called.set))
    keeper.start()
    keeper.join(10)
    assert lost.is_set() and called.is_set()  # the controller is stopped, the process exits
    stop.set()
