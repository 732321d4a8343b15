"""The pure reconciler, decision by decision, with plain dicts (no API, no clock)."""

from __future__ import annotations

import copy

import pytest
import yaml
from op_fixtures import (
    DOC,
    NOW,
    after,
    condition,
    created_pods,
    deleted_pods,
    gang,
    job,
    later,
    observed,
    pod,
    run,
)

from finetune_operator import manifests as m
from finetune_operator.reconcile import Observed, reconcile


def kinds(decision) -> list[str]:
    return [x["kind"] for x in decision.create]


def reasons(decision) -> list[str]:
    return [e.reason for e in decision.events]


# ------------------------------------------------------------------------------ creation


def test_new_job_creates_children_and_the_first_gang():
    body = job({"nodes": 2})
    d = run(body, Observed())
    assert kinds(d) == ["ConfigMap", "Service", "PersistentVolumeClaim", "Pod", "Pod"]
    assert [p["metadata"]["name"] for p in created_pods(d)] == [
        "llama-a1-worker-0",
        "llama-a1-worker-1",
    ]
    st = d.status
    assert st["phase"] == "Created"
    assert st["attempt"] == 1 and st["restarts"] == 0
    assert st["observedGeneration"] == 1
    assert st["startTime"] == "2025-01-01T12:00:00Z"
    assert st["workers"] == {"active": 2, "succeeded": 0, "failed": 0}
    assert condition(st, "Created")["status"] == "True"
    assert reasons(d) == ["Created"]
    assert d.delete == [] and not d.delete_job


def test_second_cycle_with_pending_pods_changes_nothing():
    body = job({"nodes": 2})
    first = run(body, Observed())
    body = after(body, first)
    d = run(body, observed(body, gang(body, 1, "Pending", "Pending")))
    assert d.create == [] and d.delete == [] and d.events == []
    assert d.status == first.status


def test_partially_running_gang_stays_created():
    body = after(job({"nodes": 2}), run(job({"nodes": 2}), Observed()))
    d = run(body, observed(body, gang(body, 1, "Running", "Pending")))
    assert d.status["phase"] == "Created"
    assert d.events == []
    assert d.status["workers"]["active"] == 2


def test_all_workers_running_is_running_once():
    body = after(job({"nodes": 2}), run(job({"nodes": 2}), Observed()))
    pods = gang(body, 1, "Running", "Running")
    d = run(body, observed(body, pods), later(5))
    assert d.status["phase"] == "Running"
    assert condition(d.status, "Running")["status"] == "True"
    assert condition(d.status, "Running")["lastTransitionTime"] == "2025-01-01T12:00:05Z"
    assert reasons(d) == ["Running"]
    again = run(after(body, d), observed(body, pods), later(60))
    assert again.events == [] and again.create == [] and again.delete == []
    assert condition(again.status, "Running")["lastTransitionTime"] == "2025-01-01T12:00:05Z"


def test_config_map_is_refreshed_when_the_effective_config_changes():
    body = after(job(), run(job(), Observed()))
    stale = observed(body, gang(body, 1, "Running"))
    stale = Observed(
        pods=stale.pods,
        config_map={**stale.config_map, "data": {"config.yaml": "old"}},
        service=stale.service,
        claim=stale.claim,
    )
    d = run(body, stale)
    assert [x["kind"] for x in d.update] == ["ConfigMap"]
    assert "builtin:tiny-llama" in d.update[0]["data"]["config.yaml"]


def test_missing_service_and_pvc_are_recreated():
    body = after(job(), run(job(), Observed()))
    obs = observed(body, gang(body, 1, "Running"), service=None, claim=None)
    assert kinds(run(body, obs)) == ["Service", "PersistentVolumeClaim"]


# ------------------------------------------------------------------------------ failures


def running_job(spec: dict | None = None, nodes: int = 2) -> dict:
    body = job({"nodes": nodes, **(spec or {})})
    body = after(body, run(body, Observed()))
    phases = ["Running"] * nodes
    return after(body, run(body, observed(body, gang(body, 1, *phases))))


def test_a_failed_worker_replaces_the_whole_gang():
    body = running_job()
    pods = [pod(body, 1, 0, "Running", ip="10.0.0.1"), pod(body, 1, 1, "Failed", exit_code=137)]
    d = run(body, observed(body, pods), later(30))
    assert deleted_pods(d) == ["llama-a1-worker-0", "llama-a1-worker-1"]
    assert created_pods(d) == []  # the new gang waits until the old pods are gone
    assert condition(d.status, "PodsReady")["reason"] == "WaitingForOldGang"
    st = d.status
    assert st["phase"] == "Restarting"
    assert st["attempt"] == 2 and st["restarts"] == 1
    restarting = condition(st, "Restarting")
    assert restarting["status"] == "True" and restarting["reason"] == "WorkerFailed"
    assert "llama-a1-worker-1" in restarting["message"]
    assert "exited with code 137" in restarting["message"]
    assert "restart 1 of 3" in restarting["message"]
    assert condition(st, "Running")["status"] == "False"
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "Restarting")]
    d = run(after(body, d), observed(body, []), later(31))
    assert [p["metadata"]["name"] for p in created_pods(d)] == [
        "llama-a2-worker-0",
        "llama-a2-worker-1",
    ]
    env = {e["name"]: e.get("value") for e in created_pods(d)[0]["spec"]["containers"][0]["env"]}
    assert env["FINETUNE_ATTEMPT"] == "2"


def test_replacement_gang_running_clears_restarting():
    body = running_job()
    failed = [pod(body, 1, 0, "Running", ip="10.0.0.1"), pod(body, 1, 1, "Failed", exit_code=1)]
    body = after(body, run(body, observed(body, failed)))
    d = run(body, observed(body, gang(body, 2, "Running", "Running")), later(60))
    assert d.status["phase"] == "Running"
    assert condition(d.status, "Restarting")["status"] == "False"
    assert condition(d.status, "Running")["status"] == "True"
    assert d.status["restarts"] == 1 and d.status["attempt"] == 2


def test_backoff_limit_exceeded_fails_the_job_and_stops_running_workers():
    body = running_job({"runPolicy": {"backoffLimit": 1}})
    body["status"]["restarts"] = 1
    pods = [pod(body, 1, 0, "Running", ip="10.0.0.1"), pod(body, 1, 1, "Failed", exit_code=1)]
    d = run(body, observed(body, pods), later(10))
    st = d.status
    assert st["phase"] == "Failed"
    failed = condition(st, "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert "backoffLimit is 1" in failed["message"]
    assert st["completionTime"] == "2025-01-01T12:00:10Z"
    assert created_pods(d) == []
    assert deleted_pods(d) == ["llama-a1-worker-0"]  # cleanPodPolicy Running keeps the failed one
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "BackoffLimitExceeded")]
    assert st["workers"] == {"active": 1, "succeeded": 0, "failed": 1}


def test_backoff_limit_zero_fails_on_the_first_failure():
    body = running_job({"runPolicy": {"backoffLimit": 0}}, nodes=1)
    d = run(body, observed(body, [pod(body, 1, 0, "Failed", exit_code=1)]))
    assert d.status["phase"] == "Failed" and d.status["restarts"] == 0


def test_a_worker_that_vanishes_from_a_running_gang_counts_as_a_failure():
    body = running_job()
    d = run(body, observed(body, [pod(body, 1, 0, "Running", ip="10.0.0.1")]))
    assert d.status["phase"] == "Restarting"
    assert "disappeared" in condition(d.status, "Restarting")["message"]
    assert created_pods(d) == []  # rank 0 of the old gang is still there
    assert len(created_pods(run(after(body, d), observed(body, [])))) == 2


def test_a_missing_worker_of_a_forming_gang_is_recreated_alone():
    body = after(job({"nodes": 3}), run(job({"nodes": 3}), Observed()))
    pods = [pod(body, 1, 0, "Running", ip="10.0.0.1"), pod(body, 1, 2, "Pending")]
    d = run(body, observed(body, pods))
    assert [p["metadata"]["name"] for p in created_pods(d)] == ["llama-a1-worker-1"]
    assert d.status["phase"] == "Created" and d.status["restarts"] == 0


def test_terminating_pods_are_ignored_and_leftover_attempts_deleted():
    body = running_job()
    body["status"].update({"attempt": 2, "phase": "Restarting"})
    pods = [
        pod(body, 1, 0, "Running", ip="10.0.0.1", deleting=True),
        pod(body, 1, 1, "Failed"),
        *gang(body, 2, "Running", "Running"),
    ]
    d = run(body, observed(body, pods))
    assert deleted_pods(d) == ["llama-a1-worker-1"]
    assert d.status["phase"] == "Running"


# ------------------------------------------------------------------------------ finishing


@pytest.mark.parametrize(
    ("policy", "deleted"),
    [("Running", []), ("All", ["llama-a1-worker-0", "llama-a1-worker-1"]), ("None", [])],
)
def test_success_applies_clean_pod_policy(policy, deleted):
    body = running_job({"runPolicy": {"cleanPodPolicy": policy}})
    d = run(body, observed(body, gang(body, 1, "Succeeded", "Succeeded")), later(100))
    assert d.status["phase"] == "Succeeded"
    assert d.status["completionTime"] == "2025-01-01T12:01:40Z"
    assert condition(d.status, "Succeeded")["status"] == "True"
    assert condition(d.status, "Running")["status"] == "False"
    assert deleted_pods(d) == deleted
    assert reasons(d) == ["Succeeded"]
    assert d.status["workers"] == {"active": 0, "succeeded": 2, "failed": 0}


def test_running_policy_deletes_stragglers_after_failure_but_none_keeps_them():
    for policy, expected in (("Running", ["llama-a1-worker-0"]), ("None", [])):
        body = running_job({"runPolicy": {"backoffLimit": 0, "cleanPodPolicy": policy}})
        pods = [pod(body, 1, 0, "Running", ip="10.0.0.1"), pod(body, 1, 1, "Failed")]
        assert deleted_pods(run(body, observed(body, pods))) == expected


def test_one_worker_done_while_others_still_run_is_still_running():
    body = running_job()
    d = run(body, observed(body, gang(body, 1, "Succeeded", "Running")))
    assert d.status["phase"] == "Running"
    assert d.status["workers"] == {"active": 1, "succeeded": 1, "failed": 0}


def test_finished_jobs_stay_finished_and_keep_cleaning():
    body = running_job({"runPolicy": {"cleanPodPolicy": "All"}})
    body = after(body, run(body, observed(body, gang(body, 1, "Succeeded", "Succeeded"))))
    d = run(body, observed(body, gang(body, 1, "Succeeded", "Succeeded")), later(500))
    assert d.status == body["status"]
    assert d.events == [] and created_pods(d) == []
    assert deleted_pods(d) == ["llama-a1-worker-0", "llama-a1-worker-1"]


def test_ttl_deletes_the_job_only_after_it_expires():
    body = running_job({"runPolicy": {"ttlSecondsAfterFinished": 60}})
    body = after(body, run(body, observed(body, gang(body, 1, "Succeeded", "Succeeded"))))
    assert not run(body, observed(body), later(59)).delete_job
    d = run(body, observed(body), later(60))
    assert d.delete_job
    assert reasons(d) == ["TTLExpired"]


def test_ttl_applies_to_failed_jobs_too():
    body = job({"config": {"base_model": ""}, "runPolicy": {"ttlSecondsAfterFinished": 0}})
    body = after(body, run(body, Observed()))
    assert body["status"]["phase"] == "Failed"
    assert run(body, Observed(), later(1)).delete_job


def test_active_deadline_fails_a_running_job():
    body = running_job({"runPolicy": {"activeDeadlineSeconds": 600}})
    pods = gang(body, 1, "Running", "Running")
    assert run(body, observed(body, pods), later(599)).status["phase"] == "Running"
    d = run(body, observed(body, pods), later(600))
    assert d.status["phase"] == "Failed"
    assert condition(d.status, "Failed")["reason"] == "DeadlineExceeded"
    assert "600s" in condition(d.status, "Failed")["message"]
    assert deleted_pods(d) == ["llama-a1-worker-0", "llama-a1-worker-1"]


def test_a_deleted_job_is_left_to_garbage_collection():
    body = running_job()
    body["metadata"]["deletionTimestamp"] = "2025-01-01T12:00:00Z"
    d = run(body, observed(body, gang(body, 1, "Running", "Running")))
    assert d.create == [] and d.delete == [] and d.events == []
    assert d.status == body["status"]


# ------------------------------------------------------------------------------ suspend


def test_suspend_stops_the_gang_and_resume_starts_a_new_attempt():
    body = running_job()
    pods = gang(body, 1, "Running", "Running")
    body["spec"]["runPolicy"] = {"suspend": True}
    d = run(body, observed(body, pods), later(10))
    assert d.status["phase"] == "Suspended"
    assert condition(d.status, "Suspended")["status"] == "True"
    assert condition(d.status, "Running")["status"] == "False"
    assert deleted_pods(d) == ["llama-a1-worker-0", "llama-a1-worker-1"]
    assert reasons(d) == ["Suspended"]
    assert "startTime" not in d.status
    body = after(body, d)

    again = run(body, observed(body), later(20))
    assert again.events == [] and again.create == [] and again.status == body["status"]

    body["spec"]["runPolicy"] = {"suspend": False}
    resumed = run(body, observed(body), later(30))
    st = resumed.status
    assert st["phase"] == "Created" and st["attempt"] == 2 and st["restarts"] == 0
    assert st["startTime"] == "2025-01-01T12:00:30Z"
    assert condition(st, "Suspended")["status"] == "False"
    assert [p["metadata"]["name"] for p in created_pods(resumed)] == [
        "llama-a2-worker-0",
        "llama-a2-worker-1",
    ]
    assert reasons(resumed) == ["Resumed"]


def test_a_job_created_suspended_starts_no_pods_until_resumed():
    body = job({"runPolicy": {"suspend": True}})
    d = run(body, Observed())
    assert created_pods(d) == [] and d.status["phase"] == "Suspended"
    body = after(body, d)
    body["spec"]["runPolicy"]["suspend"] = False
    d = run(body, observed(body))
    assert d.status["attempt"] == 1 and len(created_pods(d)) == 1


def test_suspended_time_does_not_count_towards_the_deadline():
    body = running_job({"runPolicy": {"activeDeadlineSeconds": 100, "suspend": True}})
    body = after(body, run(body, observed(body, gang(body, 1, "Running", "Running"))))
    body["spec"]["runPolicy"]["suspend"] = False
    body = after(body, run(body, observed(body), later(1000)))
    d = run(body, observed(body, gang(body, 2, "Running", "Running")), later(1050))
    assert d.status["phase"] == "Running"


# ------------------------------------------------------------------------------ invalid


def test_invalid_config_fails_with_field_and_line():
    body = job({"config": "base_model: x\ndatasets:\n  - path: a.jsonl\nlora:\n  r: -1\n"})
    d = run(body, Observed())
    st = d.status
    assert st["phase"] == "Failed"
    failed = condition(st, "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert "FineTuneJob ml/llama spec.config:5: lora.r" in failed["message"]
    assert "greater than 0" in failed["message"]
    assert d.create == []
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "InvalidSpec")]
    again = run(after(body, d), Observed(), later(5))
    assert again.events == [] and again.status == st


def test_invalid_spec_fields_are_named():
    body = job({"nodes": 0, "runPolicy": {"cleanPodPolicy": "Sometimes"}, "gpu": 1})
    message = condition(run(body, Observed()).status, "Failed")["message"]
    assert "spec.nodes: Input should be greater than or equal to 1" in message
    assert "spec.runPolicy.cleanPodPolicy" in message
    assert "spec.gpu: unknown field" in message


def test_env_values_are_never_echoed_in_errors():
    body = job({"env": [{"name": "HF_TOKEN", "value": 12345678}]})
    message = condition(run(body, Observed()).status, "Failed")["message"]
    assert "spec.env[0].value" in message
    assert "12345678" not in message


def test_a_fixed_spec_is_retried_with_a_fresh_gang():
    body = job({"config": {"base_model": "x", "datasets": []}})
    body = after(body, run(body, Observed()))
    assert body["status"]["phase"] == "Failed"
    body["spec"]["config"] = copy.deepcopy(job()["spec"]["config"])
    body["metadata"]["generation"] = 2
    d = run(body, Observed(), later(10))
    assert d.status["phase"] == "Created"
    assert d.status["observedGeneration"] == 2
    assert "completionTime" not in d.status
    assert condition(d.status, "Failed")["status"] == "False"
    assert len(created_pods(d)) == 1


def test_an_invalid_edit_of_a_running_job_fails_it():
    body = running_job()
    obs = observed(body, gang(body, 1, "Running", "Running"))
    body["spec"]["nodes"] = -1
    body["metadata"]["generation"] = 2
    d = run(body, obs)
    assert d.status["phase"] == "Failed"
    assert d.status["observedGeneration"] == 2
    assert deleted_pods(d) == ["llama-a1-worker-0", "llama-a1-worker-1"]


def test_job_name_too_long_for_worker_hostnames():
    body = job(name="a" * 60, spec={"nodes": 10})
    message = condition(run(body, Observed()).status, "Failed")["message"]
    assert "metadata.name" in message and "63" in message


# ------------------------------------------------------------------------------ storage


def test_existing_claim_is_used_not_created():
    body = job({"storage": {"existingClaim": "shared-ckpt"}})
    d = run(body, Observed(claim={"metadata": {"name": "shared-ckpt"}}))
    assert "PersistentVolumeClaim" not in kinds(d)
    volumes = {v["name"]: v for v in created_pods(d)[0]["spec"]["volumes"]}
    assert volumes["checkpoints"]["persistentVolumeClaim"] == {"claimName": "shared-ckpt"}


def test_missing_existing_claim_waits_with_a_warning_once():
    body = job({"storage": {"existingClaim": "nope"}})
    d = run(body, Observed())
    assert d.status["phase"] == "Pending"
    assert condition(d.status, "Created")["reason"] == "ClaimNotFound"
    assert "spec.storage.existingClaim" in condition(d.status, "Created")["message"]
    assert created_pods(d) == []
    assert reasons(d) == ["ClaimNotFound"]
    assert run(after(body, d), Observed()).events == []


# ----------------------------------------------------------------------- operator restarts


def test_lost_status_is_recovered_from_pod_labels_without_duplicates():
    body = running_job()
    pods = gang(body, 3, "Running", "Running")
    body.pop("status")
    d = run(body, observed(body, pods))
    assert created_pods(d) == []
    assert d.status["attempt"] == 3
    assert d.status["phase"] == "Running"


def test_recorded_attempt_without_pods_yet_creates_exactly_that_gang():
    body = running_job()
    body["status"].update({"attempt": 2, "phase": "Restarting", "restarts": 1})
    d = run(body, observed(body, [pod(body, 1, 0, "Failed")]))
    assert created_pods(d) == [] and deleted_pods(d) == ["llama-a1-worker-0"]
    d = run(body, observed(body, []))
    assert [p["metadata"]["name"] for p in created_pods(d)] == [
        "llama-a2-worker-0",
        "llama-a2-worker-1",
    ]
    assert d.status["restarts"] == 1


# ------------------------------------------------------------------------------ progress


def test_progress_document_becomes_status_progress():
    body = running_job()
    d = run(body, observed(body, gang(body, 1, "Running", "Running"), progress=DOC))
    assert d.status["progress"] == {
        "state": "training",
        "step": 30,
        "totalSteps": 120,
        "epoch": 0.75,
        "loss": 1.2346,
        "evalLoss": 1.5,
        "learningRate": 0.0002,
        "tokensPerSecond": 1234.6,
        "percent": 25.0,
        "eta": "1h2m",
        "updatedAt": "2025-01-01T12:00:00Z",
        "lastCheckpoint": {
            "step": 20,
            "path": "/checkpoints/checkpoint-20",
            "time": "2025-01-01T11:59:00Z",
        },
    }


def test_garbage_progress_is_ignored_and_the_last_one_kept():
    body = running_job()
    body["status"]["progress"] = {"step": 7}
    for junk in ({"step": "many"}, {"state": "dancing"}):
        d = run(body, observed(body, gang(body, 1, "Running", "Running"), progress=junk))
        assert d.status["progress"] == {"step": 7}


def test_non_finite_numbers_are_dropped_from_progress():
    body = running_job()
    doc = {**DOC, "loss": float("nan"), "tokensPerSecond": float("inf")}
    d = run(body, observed(body, gang(body, 1, "Running", "Running"), progress=doc))
    assert "loss" not in d.status["progress"] and "tokensPerSecond" not in d.status["progress"]


def test_success_completes_the_progress():
    body = running_job()
    body = after(body, run(body, observed(body, gang(body, 1, "Running", "Running"), progress=DOC)))
    d = run(body, observed(body, gang(body, 1, "Succeeded", "Succeeded")))
    assert d.status["progress"]["percent"] == 100.0
    assert d.status["progress"]["state"] == "completed"
    assert "eta" not in d.status["progress"]
    assert d.status["progress"]["step"] == 30  # what rank 0 last reported


def test_effective_config_in_the_config_map_points_at_pod_paths():
    body = job(
        {
            "dataset": {"uri": "s3://data/alpaca"},
            "model": {"uri": "s3://models/llama"},
            "config": {
                "base_model": "s3://models/llama",
                "datasets": [
                    {"path": "s3://data/alpaca/train.jsonl"},
                    {"path": "extra/more.jsonl"},
                    {"path": "/opt/data/builtin.jsonl"},
                ],
                "output_dir": "./out",
            },
        }
    )
    d = run(body, Observed())
    config_map = next(x for x in d.create if x["kind"] == "ConfigMap")
    effective = yaml.safe_load(config_map["data"]["config.yaml"])
    assert effective["base_model"] == "/data/model"
    assert effective["output_dir"] == "/checkpoints"
    assert [ds["path"] for ds in effective["datasets"]] == [
        "/data/dataset/train.jsonl",
        "/data/dataset/extra/more.jsonl",
        "/opt/data/builtin.jsonl",
    ]
    assert NOW  # the reconciler never reads the wall clock itself


# ------------------------------------------------------------------------------ spec edits


def launched(spec: dict) -> tuple[dict, list[dict]]:
    """A running job whose pods are exactly the ones the reconciler created."""
    body = job(spec)
    first = run(body, Observed())
    body = after(body, first)
    pods = created_pods(first)
    for i, made in enumerate(pods):
        made["status"] = {"phase": "Running", "podIP": f"10.0.0.{i + 1}"}
    body = after(body, run(body, observed(body, pods)))
    assert body["status"]["phase"] == "Running"
    return body, pods


@pytest.mark.parametrize(
    "edit",
    [
        {"image": "runtime:v2"},
        {"nodes": 3},
        {"env": [{"name": "NCCL_DEBUG", "value": "INFO"}]},
        {"config": {"base_model": "builtin:tiny-llama", "datasets": [{"path": "other.jsonl"}]}},
    ],
    ids=["image", "nodes", "env", "config"],
)
def test_editing_the_job_replaces_the_gang_without_counting_a_restart(edit):
    body, pods = launched({"nodes": 2})
    digest = pods[0]["metadata"]["annotations"]["finetune.dev/spec-hash"]
    before = observed(body, pods)
    body["spec"].update(copy.deepcopy(edit))
    body["metadata"]["generation"] = 2
    d = run(body, before, later(60))
    assert deleted_pods(d) == ["llama-a1-worker-0", "llama-a1-worker-1"]
    assert created_pods(d) == []
    new = created_pods(run(after(body, d), observed(body, []), later(61)))
    assert {p["metadata"]["name"].rsplit("-", 1)[0] for p in new} == {"llama-a2-worker"}
    assert len(new) == body["spec"]["nodes"]
    assert all(p["metadata"]["annotations"]["finetune.dev/spec-hash"] != digest for p in new)
    st = d.status
    assert st["phase"] == "Created" and st["attempt"] == 2 and st["restarts"] == 0
    assert condition(st, "Created")["reason"] == "SpecChanged"
    assert reasons(d) == ["SpecChanged"]


def test_run_policy_edits_and_operator_defaults_do_not_restart_the_gang():
    body, pods = launched({"nodes": 2})
    body["spec"]["runPolicy"] = {"backoffLimit": 9, "ttlSecondsAfterFinished": 60}
    d = run(body, observed(body, pods), later(60))
    assert d.create == [] and d.delete == [] and d.status["phase"] == "Running"
    other = m.PodSettings(default_image="runtime:upgraded", progress_port=9400)
    d = reconcile(body, observed(body, pods), later(61), other)
    assert d.create == [] and d.delete == []


def test_config_edit_also_refreshes_the_config_map():
    body, pods = launched({})
    before = observed(body, pods)  # children as they were made before the edit
    body["spec"]["config"]["training"] = {"max_steps": 99}
    d = run(body, before)
    assert [x["kind"] for x in d.update] == ["ConfigMap"]
    assert "max_steps: 99" in d.update[0]["data"]["config.yaml"]
    assert created_pods(d) == []
    assert len(created_pods(run(after(body, d), observed(body, [])))) == 1


# ------------------------------------------------------------------------ parsed once per cycle


def _count_config_parses(monkeypatch) -> list[str]:
    """A spy around the real parse_config (it still parses): one entry per call."""
    import finetune_runtime.config as config_module

    calls: list[str] = []
    real = config_module.parse_config

    def spy(*args, **kwargs):
        calls.append(str(kwargs.get("source")))
        return real(*args, **kwargs)

    monkeypatch.setattr(config_module, "parse_config", spy)
    return calls


def test_one_cycle_parses_the_training_config_once(monkeypatch):
    body = running_job({"serve": {"replicas": 1}})
    seen = observed(body, gang(body, 1, "Succeeded", "Succeeded"))  # (runs a cycle itself)
    calls = _count_config_parses(monkeypatch)
    d = run(body, seen)
    assert d.status["phase"] == "Succeeded"
    assert "Deployment" in kinds(d)  # the serving replicas were decided in the same cycle
    assert len(calls) == 1, calls


def test_a_finished_job_without_serve_never_parses_its_config(monkeypatch):
    body = running_job()
    body = after(body, run(body, observed(body, gang(body, 1, "Succeeded", "Succeeded"))))
    seen = observed(body, gang(body, 1, "Succeeded", "Succeeded"))
    calls = _count_config_parses(monkeypatch)
    d = run(body, seen)
    assert d.status["phase"] == "Succeeded"
    assert calls == []
