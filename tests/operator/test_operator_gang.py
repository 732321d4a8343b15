"""Gang admission: Kueue pod groups and the gang schedulers' PodGroups (pure, no API).

The PodGroups are validated against the openAPIV3Schema of the CRDs those projects
publish (tests/operator/crds/, copied unmodified from their release tags).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from op_fixtures import (
    SETTINGS,
    after,
    condition,
    created_pods,
    job,
    later,
    observed,
    pod,
    ref,
    run,
)

from finetune_operator import manifests as m
from finetune_operator import scheduling as g
from finetune_operator.reconcile import Observed
from finetune_operator.spec import SpecError, parse_spec, validate_job

CRDS = Path(__file__).parent / "crds"
QUEUE = {"kueue.x-k8s.io/queue-name": "team-a"}


def crd_schema(filename: str, version: str) -> dict[str, Any]:
    crd = next(d for d in yaml.safe_load_all((CRDS / filename).read_text()) if d)
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return served["schema"]["openAPIV3Schema"]


SCHEMAS = {
    "scheduling.x-k8s.io/v1alpha1": crd_schema("scheduling.x-k8s.io_podgroups.yaml", "v1alpha1"),
    "scheduling.volcano.sh/v1beta1": crd_schema("scheduling.volcano.sh_podgroups.yaml", "v1beta1"),
}


def validate_pod_group(group: dict[str, Any]) -> None:
    """Against the published CRD schema; unknown fields fail as the apiserver would prune."""
    schema = SCHEMAS[group["apiVersion"]]
    jsonschema.validate(group, schema)
    for key in group["spec"]:
        assert key in schema["properties"]["spec"]["properties"], f"unknown spec.{key}"


def kueue_job(spec: dict[str, Any] | None = None) -> dict[str, Any]:
    body = job({"nodes": 2, **(spec or {})})
    body["metadata"]["labels"] = dict(QUEUE)
    return body


def gated(p: dict[str, Any]) -> dict[str, Any]:
    """A pod as Kueue's webhook leaves it until the group is admitted."""
    p["spec"]["schedulingGates"] = [{"name": "kueue.x-k8s.io/admission"}]
    return p


# --------------------------------------------------------------------------------- kueue


def test_kueue_queue_label_makes_each_gang_one_pod_group():
    d = run(kueue_job(), Observed())
    pods = created_pods(d)
    assert len(pods) == 2
    for worker in pods:
        labels, annotations = worker["metadata"]["labels"], worker["metadata"]["annotations"]
        assert labels["kueue.x-k8s.io/queue-name"] == "team-a"
        assert labels["kueue.x-k8s.io/pod-group-name"] == "llama-a1"
        assert annotations["kueue.x-k8s.io/pod-group-total-count"] == "2"
        # never refilled in place: the operator replaces whole gangs under a new group
        assert annotations["kueue.x-k8s.io/retriable-in-group"] == "false"
        kubernetes_validate.validate(worker, "1.37", strict=True)


def test_kueue_pod_group_is_per_attempt():
    body = kueue_job()
    worker = m.build_worker_pod(ref(body), parse_spec(body["spec"]), 3, 0, SETTINGS, queue="team-a")
    assert worker["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] == "llama-a3"


def test_kueue_no_label_no_kueue_metadata():
    (worker, *_) = created_pods(run(job({"nodes": 2}), Observed()))
    assert not [k for k in worker["metadata"]["labels"] if k.startswith("kueue")]
    assert not [k for k in worker["metadata"].get("annotations", {}) if k.startswith("kueue")]


def test_kueue_gated_pods_show_queued_then_admitted():
    body = kueue_job()
    body = after(body, run(body, Observed()))
    pods = [gated(pod(body, 1, 0)), gated(pod(body, 1, 1))]
    for p in pods:
        p["metadata"]["labels"] |= {"kueue.x-k8s.io/queue-name": "team-a"}
    d = run(body, observed(body, pods))
    assert condition(d.status, "Queued")["status"] == "True"
    assert condition(d.status, "Queued")["reason"] == "WaitingForQuota"
    assert condition(d.status, "Admitted")["status"] == "False"
    assert "startup" not in d.status  # queueing is not a startup problem
    assert d.create == [] and d.events == []

    for p in pods:
        p["spec"].pop("schedulingGates")
    d = run(after(body, d), observed(body, pods))
    assert condition(d.status, "Queued")["status"] == "False"
    assert condition(d.status, "Admitted")["status"] == "True"


def test_kueue_queued_time_never_trips_the_startup_timeout():
    body = kueue_job({"runPolicy": {"startupTimeoutSeconds": 60}})
    body = after(body, run(body, Observed()))
    pods = [gated(pod(body, 1, 0)), gated(pod(body, 1, 1))]
    for p in pods:  # the scheduler reports gated pods as such, not Unschedulable
        p["status"]["conditions"] = [
            {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}
        ]
    d = run(body, observed(body, pods), later(3600))
    assert d.status["phase"] == "Created"


def test_kueue_deleted_queued_worker_releases_its_workload():
    body = kueue_job()
    worker = created_pods(run(body, Observed()))[0]
    assert g.kueue_workload_to_release(worker) is None  # not being deleted
    worker["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert g.kueue_workload_to_release(worker) is None  # admitted (no gate): Kueue finishes it
    assert g.kueue_workload_to_release(gated(worker)) == "llama-a1"
    plain = gated(created_pods(run(job({"nodes": 2}), Observed()))[0])
    plain["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert g.kueue_workload_to_release(plain) is None  # not in a Kueue pod group


def test_kueue_and_a_gang_scheduler_are_exclusive():
    body = kueue_job({"runPolicy": {"schedulingPolicy": {"scheduler": "volcano"}}})
    with pytest.raises(SpecError, match="kueue.x-k8s.io/queue-name"):
        validate_job(body)


# ------------------------------------------------------------------------------ podgroups


@pytest.mark.parametrize(
    ("scheduler", "api_version", "scheduler_name"),
    [
        ("coscheduling", "scheduling.x-k8s.io/v1alpha1", "scheduler-plugins-scheduler"),
        ("volcano", "scheduling.volcano.sh/v1beta1", "volcano"),
    ],
)
def test_podgroup_is_created_first_owned_and_valid(scheduler, api_version, scheduler_name):
    policy = {"scheduler": scheduler, "minAvailable": 3, "priorityClass": "train"}
    if scheduler == "volcano":
        policy["queue"] = "research"
    body = job({"nodes": 4, "runPolicy": {"schedulingPolicy": policy}})
    d = run(body, Observed())
    kinds = [x["kind"] for x in d.create]
    assert kinds.index("PodGroup") < kinds.index("Pod")  # the group exists before its pods
    (group,) = [x for x in d.create if x["kind"] == "PodGroup"]
    assert group["apiVersion"] == api_version
    assert group["metadata"]["name"] == "llama"
    assert group["metadata"]["ownerReferences"][0]["uid"] == "uid-llama"
    assert group["spec"]["minMember"] == 3
    validate_pod_group(group)
    for worker in created_pods(d):
        assert worker["spec"]["schedulerName"] == scheduler_name
        assert worker["spec"]["priorityClassName"] == "train"
        kubernetes_validate.validate(worker, "1.37", strict=True)
    worker = created_pods(d)[0]
    if scheduler == "coscheduling":
        assert worker["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "llama"
    else:
        assert worker["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "llama"
        assert group["spec"]["queue"] == "research"
        assert group["spec"]["priorityClassName"] == "train"


def test_podgroup_min_member_defaults_to_the_gang():
    body = job({"nodes": 3, "runPolicy": {"schedulingPolicy": {"scheduler": "coscheduling"}}})
    group = m.build_pod_group(ref(body), parse_spec(body["spec"]))
    assert group is not None and group["spec"]["minMember"] == 3


def test_podgroup_schema_check_catches_a_wrong_field():
    body = job({"nodes": 2, "runPolicy": {"schedulingPolicy": {"scheduler": "coscheduling"}}})
    group = m.build_pod_group(ref(body), parse_spec(body["spec"]))
    assert group is not None
    group["spec"]["minMember"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        validate_pod_group(group)


def test_podgroup_explicit_scheduler_name_wins():
    policy = {"schedulingPolicy": {"scheduler": "coscheduling"}}
    body = job({"schedulerName": "my-coscheduler", "runPolicy": policy})
    (worker,) = created_pods(run(body, Observed()))
    assert worker["spec"]["schedulerName"] == "my-coscheduler"


def test_podgroup_not_recreated_when_it_exists():
    body = job({"runPolicy": {"schedulingPolicy": {"scheduler": "volcano"}}})
    first = run(body, Observed())
    (group,) = [x for x in first.create if x["kind"] == "PodGroup"]
    d = run(after(body, first), observed(body, pod_group=group))
    assert "PodGroup" not in [x["kind"] for x in d.create]


def test_podgroup_default_scheduler_creates_none():
    d = run(job({"nodes": 2}), Observed())
    assert "PodGroup" not in [x["kind"] for x in d.create]


def test_podgroup_unschedulable_under_a_gang_scheduler_is_waiting_not_failing():
    policy = {"schedulingPolicy": {"scheduler": "coscheduling"}, "startupTimeoutSeconds": 60}
    body = job({"nodes": 2, "runPolicy": policy})
    body = after(body, run(body, Observed()))
    pods = [pod(body, 1, 0), pod(body, 1, 1)]
    for p in pods:
        p["status"]["conditions"] = [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
        ]
    d = run(body, observed(body, pods), later(3600))
    assert d.status["phase"] == "Created" and "startup" not in d.status


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({"minAvailable": 5}, "minAvailable (5) exceeds nodes (2)"),
        ({"queue": "q"}, "queue is a Volcano queue"),
    ],
)
def test_podgroup_policy_errors_name_the_field(policy, expected):
    with pytest.raises(SpecError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        parse_spec({"config": {}, "nodes": 2, "runPolicy": {"schedulingPolicy": policy}})


def test_podgroup_priority_fields_are_exclusive():
    spec = {
        "config": {},
        "priorityClassName": "a",
        "runPolicy": {"schedulingPolicy": {"priorityClass": "b"}},
    }
    with pytest.raises(SpecError, match="not both"):
        parse_spec(spec)
