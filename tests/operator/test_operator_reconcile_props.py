"""Property test: random kubelet histories never break the gang invariants.

A tiny simulator applies each Decision to an in-memory "cluster" (status written,
deletes and creates applied) and then lets a random kubelet action happen.
"""

from __future__ import annotations

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from op_fixtures import SETTINGS, job, later

from finetune_operator import pod_facts as pf
from finetune_operator import status as s
from finetune_operator.reconcile import Observed, reconcile

ACTIONS = st.sampled_from(["run", "succeed", "fail", "vanish", "tick", "suspend", "resume"])


def _pods_of(pods: dict, attempt: int) -> list[dict]:
    return [p for p in pods.values() if pf.attempt_of(p) == attempt]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(st.tuples(ACTIONS, st.integers(0, 3)), min_size=1, max_size=25),
    nodes=st.integers(1, 3),
    backoff=st.integers(0, 3),
)
def test_gang_invariants_hold_for_any_history(steps, nodes, backoff):
    body = job({"nodes": nodes, "runPolicy": {"backoffLimit": backoff}})
    pods: dict[str, dict] = {}
    others: dict[str, dict | None] = {"config_map": None, "service": None, "claim": None}
    seen_attempt = 0
    for tick, (action, index) in enumerate(steps):
        decision = reconcile(
            body, Observed(pods=list(pods.values()), **others), later(tick), SETTINGS
        )
        st_ = decision.status
        # --- invariants on the decision itself
        for made in decision.create:
            if made["kind"] == "Pod":
                assert made["metadata"]["name"] not in pods, "a pod was created twice"
                # gang_replacement: a new gang starts only once every older pod is gone
                assert all(pf.attempt_of(p) == pf.attempt_of(made) for p in pods.values())
        assert st_.get("phase") in s.PHASES
        assert 0 <= st_.get("restarts", 0) <= backoff
        assert st_.get("attempt", 0) >= seen_attempt, "attempts never go back"
        seen_attempt = st_.get("attempt", 0)
        if st_.get("phase") == s.FAILED:
            reason = next(c for c in st_["conditions"] if c["type"] == "Failed")["reason"]
            assert reason == "BackoffLimitExceeded" and st_["restarts"] == backoff
        # --- apply it
        body["status"] = copy.deepcopy(st_)
        for ref in decision.delete:
            if ref.kind == "Pod":
                pods.pop(ref.name, None)
        for made in decision.create:
            if made["kind"] == "Pod":
                pods[made["metadata"]["name"]] = {**made, "status": {"phase": "Pending"}}
            else:
                key = {"ConfigMap": "config_map", "Service": "service"}.get(made["kind"], "claim")
                others[key] = made
        # --- invariants on the resulting cluster
        current = _pods_of(pods, seen_attempt)
        active = [p for p in pods.values() if pf.phase_of(p) in ("Pending", "Running")]
        assert all(pf.attempt_of(p) == seen_attempt for p in active), "two gangs at once"
        assert len(current) <= nodes
        if st_.get("phase") == s.SUSPENDED:
            assert not active
        if st_.get("phase") in (s.CREATED, s.RUNNING, s.RESTARTING):
            waiting = any(
                c["type"] == "PodsReady" and c["reason"] == "WaitingForOldGang"
                for c in st_["conditions"]
            )
            # the whole gang, or none of it while the old one terminates (created next cycle)
            assert sorted(pf.rank_of(p) for p in current) == list(range(nodes)) or (
                not current and waiting
            )
        # --- a random kubelet / user action
        targets = sorted(current, key=pf.rank_of)
        target = targets[index % len(targets)] if targets else None
        if action == "suspend":
            body["spec"]["runPolicy"]["suspend"] = True
        elif action == "resume":
            body["spec"]["runPolicy"]["suspend"] = False
        elif target is not None and action == "vanish":
            pods.pop(target["metadata"]["name"])
        elif target is not None and action != "tick":
            phase = {"run": "Running", "succeed": "Succeeded", "fail": "Failed"}[action]
            if pf.phase_of(target) in ("Pending", "Running"):
                target["status"] = {"phase": phase, "podIP": "10.1.1.1"}
