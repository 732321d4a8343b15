"""Worker pods get time to checkpoint on SIGTERM: runPolicy.terminationGracePeriodSeconds."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from op_fixtures import SETTINGS, after, job, observed, ref, run

from finetune_operator import manifests as m
from finetune_operator.reconcile import Observed
from finetune_operator.spec import SpecError, parse_spec


def grace(spec: dict[str, Any]) -> int:
    body = job(spec)
    pod = m.build_worker_pod(ref(body), parse_spec(body["spec"]), 1, 0, SETTINGS)
    kubernetes_validate.validate(pod, "1.37", strict=True)
    return int(pod["spec"]["terminationGracePeriodSeconds"])


def test_workers_get_time_to_checkpoint_on_sigterm():
    assert grace({}) == 120  # torchrun's 30 s shutdown timeout plus one checkpoint
    assert grace({"runPolicy": {"terminationGracePeriodSeconds": 900}}) == 900
    assert grace({"runPolicy": {"terminationGracePeriodSeconds": 0}}) == 0
    with pytest.raises(SpecError, match="terminationGracePeriodSeconds"):
        parse_spec(job({"runPolicy": {"terminationGracePeriodSeconds": -1}})["spec"])


def test_a_grace_period_edit_does_not_replace_the_running_gang():
    """Like every runPolicy edit: new gangs get it, running workers are left alone."""
    body = job({"nodes": 2})
    first = run(body, Observed())
    body = after(body, first)
    pods = [  # as created, with their spec-hash annotation
        {**p, "status": {"phase": "Running", "podIP": f"10.0.0.{i}"}}
        for i, p in enumerate(x for x in first.create if x["kind"] == "Pod")
    ]
    assert all(p["metadata"]["annotations"] for p in pods)
    body = after(body, run(body, observed(body, pods)))
    body["spec"]["runPolicy"] = {"terminationGracePeriodSeconds": 600}
    body["metadata"]["generation"] = 2
    d = run(body, observed(body, pods))
    assert d.delete == [] and d.create == []
    assert d.status["phase"] == "Running" and d.status["observedGeneration"] == 2
    # An edit of the config itself does replace it (the check above is not vacuous).
    body["spec"]["config"]["training"]["max_steps"] = 3
    assert [r.name for r in run(body, observed(body, pods)).delete] == [
        "llama-a1-worker-0",
        "llama-a1-worker-1",
    ]
