"""Failure policy and startup problems, decision by decision (pure reconcile, plain dicts).

restartPolicy OnFailure | Never | ExitCode (Kubeflow's meanings) plus the runtime's own
user-error exit codes; workers that cannot start (create refused, Unschedulable, image
pull errors, CreateContainerConfigError) with backoff, aggregated events and a deadline.
"""

from __future__ import annotations

import pytest
from op_fixtures import (
    after,
    condition,
    created_pods,
    deleted_pods,
    job,
    later,
    observed,
    pod,
    run,
)

from finetune_operator.reconcile import Observed
from finetune_operator.startup import EVENT_AFTER_SECONDS, Rejection, backoff_seconds
from finetune_runtime.errors import USER_ERROR_EXIT_CODES, ConfigError, DatasetError

SECRET = "AKIAABCDEFGHIJKLMNOP"


def running(spec: dict | None = None, nodes: int = 2) -> dict:
    body = job({"nodes": nodes, **(spec or {})})
    body = after(body, run(body, Observed()))
    pods = [pod(body, 1, r, "Running", ip=f"10.0.0.{r + 1}") for r in range(nodes)]
    return after(body, run(body, observed(body, pods), later(1)))


def fail_rank1(body: dict, code: int | None, logs: dict | None = None, at: float = 10):
    pods = [pod(body, 1, 0, "Running", ip="10.0.0.1"), pod(body, 1, 1, "Failed", exit_code=code)]
    return run(body, observed(body, pods, logs=logs or {}), later(at))


# ------------------------------------------------------------------------ permanent failures


def test_permanent_failure_runtime_user_error_codes_are_the_runtime_s():
    assert ConfigError.exit_code in USER_ERROR_EXIT_CODES
    assert DatasetError.exit_code in USER_ERROR_EXIT_CODES


@pytest.mark.parametrize("code", sorted(USER_ERROR_EXIT_CODES))
def test_permanent_failure_user_error_fails_the_job_with_its_log(code):
    log = "step 1\n" * 30 + f"datasets[0]: bad row (key {SECRET})\n"
    d = fail_rank1(running(), code, logs={"llama-a1-worker-1": log})
    st = d.status
    assert st["phase"] == "Failed" and st["restarts"] == 0
    failed = condition(st, "Failed")
    assert failed["reason"] == "PermanentFailure"
    assert f"exited with code {code}" in failed["message"]
    assert USER_ERROR_EXIT_CODES[code] in failed["message"]
    assert "Last log lines:" in failed["message"] and "bad row" in failed["message"]
    assert failed["message"].count("step 1") < 30  # only the tail
    assert SECRET not in failed["message"]  # never echo a credential
    assert SECRET not in " ".join(e.message for e in d.events)
    assert created_pods(d) == []
    assert deleted_pods(d) == ["llama-a1-worker-0"]  # cleanPodPolicy Running


def test_permanent_failure_on_failure_retries_other_codes():
    d = fail_rank1(running(), 1)
    assert d.status["phase"] == "Restarting" and d.status["restarts"] == 1


@pytest.mark.parametrize(
    ("code", "phase"), [(1, "Failed"), (127, "Failed"), (128, "Restarting"), (137, "Restarting")]
)
def test_permanent_failure_exit_code_policy(code, phase):
    d = fail_rank1(running({"runPolicy": {"restartPolicy": "ExitCode"}}), code)
    assert d.status["phase"] == phase
    if phase == "Failed":
        assert "restartPolicy ExitCode" in condition(d.status, "Failed")["message"]


def test_permanent_failure_never_policy_fails_on_any_failure():
    d = fail_rank1(running({"runPolicy": {"restartPolicy": "Never"}}), 137)
    assert d.status["phase"] == "Failed"
    assert "restartPolicy is Never" in condition(d.status, "Failed")["message"]


def test_permanent_failure_never_policy_fails_on_a_lost_worker():
    body = running({"runPolicy": {"restartPolicy": "Never"}})
    d = run(body, observed(body, [pod(body, 1, 0, "Running", ip="10.0.0.1")]), later(5))
    assert d.status["phase"] == "Failed"
    assert condition(d.status, "Failed")["reason"] == "PermanentFailure"


def test_permanent_failure_evicted_pod_without_exit_code_is_retried_under_exit_code():
    body = running({"runPolicy": {"restartPolicy": "ExitCode"}})
    evicted = pod(body, 1, 1, "Failed")
    evicted["status"]["reason"] = "Evicted"
    d = run(body, observed(body, [pod(body, 1, 0, "Running", ip="10.0.0.1"), evicted]))
    assert d.status["phase"] == "Restarting"


# --------------------------------------------------------------------- startup problems


def created_job(spec: dict | None = None, nodes: int = 2) -> dict:
    body = job({"nodes": nodes, **(spec or {})})
    return after(body, run(body, Observed()))


def stuck(body: dict, reason: str, rank: int = 1) -> dict:
    p = pod(body, 1, rank)
    if reason == "Unschedulable":
        p["status"]["conditions"] = [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
            }
        ]
    else:
        p["status"]["containerStatuses"] = [
            {
                "name": "trainer",
                "state": {"waiting": {"reason": reason, "message": f"{reason}: details"}},
            }
        ]
    return p


@pytest.mark.parametrize(
    "reason",
    [
        "Unschedulable",
        "ErrImagePull",
        "ImagePullBackOff",
        "CreateContainerConfigError",
    ],
    ids=["unschedulable", "image_pull_err", "image_pull_backoff", "create_container_config"],
)
def test_unschedulable_and_image_pull_problems_are_condition_reasons(reason):
    body = created_job()
    pods = [pod(body, 1, 0), stuck(body, reason)]
    d = run(body, observed(body, pods), later(5))
    ready = condition(d.status, "PodsReady")
    assert ready["status"] == "False" and ready["reason"] == reason
    assert "llama-a1-worker-1" in ready["message"]
    assert d.status["startup"]["reason"] == reason
    assert d.events == []  # a moment's problem (e.g. a claim still binding) posts nothing
    d = run(after(body, d), observed(body, pods), later(5 + EVENT_AFTER_SECONDS))
    assert [(e.type, e.reason) for e in d.events] == [("Warning", reason)]
    # The next cycles keep the condition but post no new event (aggregated).
    d2 = run(after(body, d), observed(body, pods), later(90))
    assert d2.events == [] and d2.status["startup"]["since"] == d.status["startup"]["since"]


@pytest.mark.parametrize("reason", ["Unschedulable", "ImagePullBackOff"], ids=str.lower)
def test_unschedulable_image_pull_fail_after_the_startup_timeout(reason):
    body = created_job({"runPolicy": {"startupTimeoutSeconds": 120}})
    pods = [pod(body, 1, 0), stuck(body, reason)]
    d = run(body, observed(body, pods), later(5))
    body = after(body, d)
    d = run(body, observed(body, pods), later(100))
    assert d.status["phase"] == "Created"
    d = run(after(body, d), observed(body, pods), later(125))
    assert d.status["phase"] == "Failed"
    failed = condition(d.status, "Failed")
    assert failed["reason"] == "StartupTimeout"
    assert reason in failed["message"] and "startupTimeoutSeconds" in failed["message"]
    assert deleted_pods(d) == ["llama-a1-worker-0", "llama-a1-worker-1"]


def test_unschedulable_clears_once_the_pod_is_placed():
    body = created_job()
    d = run(body, observed(body, [pod(body, 1, 0), stuck(body, "Unschedulable")]), later(5))
    body = after(body, d)
    d = run(body, observed(body, [pod(body, 1, 0), pod(body, 1, 1)]), later(10))
    assert "startup" not in d.status
    assert condition(d.status, "PodsReady")["reason"] == "Starting"


# --------------------------------------------------------------------- create rejections


def rejected(body: dict, at: float, rejections: list[Rejection], pods=None):
    return run(body, observed(body, pods or [], rejections=rejections), later(at))


def test_admission_rejected_creates_back_off_exponentially_with_one_event():
    quota = Rejection("Pod", "llama-a1-worker-0", 403, 'pods "x" is forbidden: exceeded quota')
    body = created_job()
    d = rejected(body, 1, [quota])
    ready = condition(d.status, "PodsReady")
    assert ready["reason"] == "CreateRejected" and "exceeded quota" in ready["message"]
    assert d.status["startup"]["retries"] == 1
    assert d.create == []  # backing off: nothing is retried in this cycle
    assert [e.reason for e in d.events] == ["CreateRejected"]
    body = after(body, d)

    # Within the backoff: no create, no event.
    d = rejected(body, 1 + backoff_seconds(1) - 1, [])
    assert d.create == [] and d.events == []
    body = after(body, d)
    # Backoff over: the workers are created again.
    d = rejected(body, 1 + backoff_seconds(1), [])
    assert len(created_pods(d)) == 2 and d.events == []
    body = after(body, d)
    # Refused again: the next wait is twice as long, still no second event.
    d = rejected(body, 7, [quota])
    assert d.status["startup"]["retries"] == 2 and d.events == []
    assert backoff_seconds(2) == 2 * backoff_seconds(1)
    assert backoff_seconds(30) == 300  # capped


def test_admission_rejected_creates_fail_the_job_after_the_startup_timeout():
    quota = Rejection("Pod", "llama-a1-worker-0", 403, "forbidden: exceeded quota")
    body = created_job({"runPolicy": {"startupTimeoutSeconds": 60}})
    body = after(body, rejected(body, 1, [quota]))
    d = rejected(body, 61, [quota])
    assert d.status["phase"] == "Failed"
    assert condition(d.status, "Failed")["reason"] == "StartupTimeout"
    assert "CreateRejected" in condition(d.status, "Failed")["message"]


def test_admission_rejection_messages_never_echo_credentials():
    leak = Rejection("Pod", "p", 422, "spec.containers[0].env: https://user:hunter2@s3.example")
    d = rejected(created_job(), 1, [leak])
    text = str(d.status) + " ".join(e.message for e in d.events)
    assert "hunter2" not in text and "https://***@s3.example" in text


def test_admission_rejection_recovery_clears_the_problem():
    quota = Rejection("Pod", "llama-a1-worker-0", 403, "exceeded quota")
    body = after(created_job(nodes=1), rejected(created_job(nodes=1), 1, [quota]))
    d = rejected(body, 30, [], pods=[pod(body, 1, 0)])
    assert "startup" not in d.status
