"""End to end: the real `finetune-operator` process on a real control plane.

What is real: the operator process (kopf + the kubernetes client, authenticated as the
chart's ServiceAccount under the chart's RBAC), kube-apiserver with the generated CRD,
etcd, the scheduler, the controller-manager's garbage collector and EndpointSlice
controller, HTTP progress endpoints on pod IPs. What is played by the test (it cannot exist
here): the containers of these pods. The node agent (tests/kubeharness) reports their phases
when the test says so (`node.run`, `node.finish`), writing pod status as the node's own
identity, as a kubelet would.
"""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest
from kubeharness.cluster import Cluster, wait_for
from kubeharness.node_agent import NodeAgent
from kubeharness.operator_process import Identity, OperatorProcess

pytestmark = pytest.mark.slow

CONFIG = {
    "base_model": "builtin:tiny-llama",
    "datasets": [{"path": "train.jsonl"}],
    "training": {"max_steps": 20},
}


def spec(**extra: Any) -> dict[str, Any]:
    return {"config": CONFIG, **extra}


def phase_is(cluster: Cluster, ns: str, name: str, phase: str):
    return lambda: cluster.status(ns, name).get("phase") == phase


def pods_of(cluster: Cluster, ns: str, attempt: int, count: int) -> list[dict[str, Any]]:
    return wait_for(
        lambda: (pods := cluster.pods(ns, attempt)) and len(pods) == count and pods,
        what=f"{count} worker pod(s) of attempt {attempt}",
    )


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def start_gang(cluster: Cluster, node: NodeAgent, ns: str, name: str, attempt: int, n: int):
    pods = pods_of(cluster, ns, attempt, n)
    ips = [node.run(pod) for pod in pods]
    wait_for(phase_is(cluster, ns, name, "Running"), what=f"{name} Running")
    return pods, ips


def reasons(cluster: Cluster, ns: str) -> list[str]:
    # resourceVersion orders writes; creationTimestamp has only second resolution.
    events = sorted(cluster.events(ns), key=lambda e: int(e["metadata"]["resourceVersion"]))
    return [e["reason"] for e in events]


def test_happy_path_to_succeeded(
    cluster: Cluster, node: NodeAgent, operator: OperatorProcess, ns: str
):
    cluster.create_job(ns, "llama", spec(nodes=2))
    pods = pods_of(cluster, ns, 1, 2)
    wait_for(phase_is(cluster, ns, "llama", "Created"))
    job = cluster.job(ns, "llama")
    uid = job["metadata"]["uid"]

    children = [
        *pods,
        *cluster.children("configmaps", ns),
        *cluster.children("services", ns),
        *cluster.children("persistentvolumeclaims", ns),
    ]
    assert sorted(c["kind"] for c in children) == [
        "ConfigMap",
        "PersistentVolumeClaim",
        "Pod",
        "Pod",
        "Service",
    ]
    for child in children:
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("FineTuneJob", "llama", uid)
        assert owner["controller"] is True
        kubernetes_validate.validate(child, "1.37", strict=True)

    for pod in pods:
        node.run(pod)
    wait_for(phase_is(cluster, ns, "llama", "Running"))
    for pod in pods:
        node.finish(pod, exit_code=0)
    wait_for(phase_is(cluster, ns, "llama", "Succeeded"))

    status = cluster.status(ns, "llama")
    assert condition(status, "Succeeded")["status"] == "True"
    assert condition(status, "Running")["status"] == "False"
    assert status["workers"] == {"active": 0, "succeeded": 2, "failed": 0}
    assert status["attempt"] == 1 and status["restarts"] == 0
    assert status["observedGeneration"] == 1
    assert status["completionTime"] >= status["startTime"]
    assert reasons(cluster, ns) == ["Created", "Running", "Succeeded"]
    assert len(cluster.pods(ns)) == 2  # cleanPodPolicy Running keeps finished pods (logs)
    assert "finetune_operator_jobs_succeeded_total" in operator.metrics()


def test_invalid_config_fails_and_the_operator_stays_healthy(
    cluster: Cluster, operator: OperatorProcess, ns: str
):
    bad = "base_model: builtin:tiny-llama\ndatasets:\n  - path: a.jsonl\nlora:\n  r: 0\n"
    cluster.create_job(ns, "broken", spec(config=bad))
    wait_for(phase_is(cluster, ns, "broken", "Failed"), what="InvalidSpec")
    failed = condition(cluster.status(ns, "broken"), "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert (
        f"FineTuneJob {ns}/broken spec.config:5: lora.r: Input should be greater than 0"
        in (failed["message"])
    )
    assert cluster.pods(ns) == [] and cluster.children("configmaps", ns) == []
    (event,) = cluster.events(ns)
    assert event["type"] == "Warning" and event["reason"] == "InvalidSpec"

    assert operator.healthy()
    cluster.create_job(ns, "fine", spec())
    pods_of(cluster, ns, 1, 1)

    # Fixing the spec (a new generation) retries the job.
    cluster.patch_job(ns, "broken", {"spec": {"config": CONFIG}})
    wait_for(phase_is(cluster, ns, "broken", "Created"), what="fixed job restarted")
    assert cluster.status(ns, "broken")["observedGeneration"] == 2


def test_a_failed_worker_replaces_the_gang(cluster: Cluster, node: NodeAgent, ns: str):
    cluster.create_job(ns, "gang", spec(nodes=2))
    pods, _ = start_gang(cluster, node, ns, "gang", 1, 2)
    node.finish(pods[1], exit_code=137, reason="OOMKilled")

    new = pods_of(cluster, ns, 2, 2)
    wait_for(lambda: cluster.pods(ns, 1) == [], what="attempt 1 deleted")
    status = wait_for(
        lambda: (st := cluster.status(ns, "gang")).get("attempt") == 2 and st, what="attempt 2"
    )
    assert status["restarts"] == 1
    message = condition(status, "Restarting")["message"]
    assert "gang-a1-worker-1 failed" in message and "137 (OOMKilled)" in message
    env = {e["name"]: e.get("value") for e in new[0]["spec"]["containers"][0]["env"]}
    assert env["FINETUNE_ATTEMPT"] == "2"

    for pod in new:
        node.run(pod)
    wait_for(phase_is(cluster, ns, "gang", "Running"))
    assert condition(cluster.status(ns, "gang"), "Restarting")["status"] == "False"
    assert "Restarting" in reasons(cluster, ns)


def test_backoff_limit_exceeded(cluster: Cluster, node: NodeAgent, ns: str):
    cluster.create_job(ns, "flaky", spec(runPolicy={"backoffLimit": 1}))
    for attempt in (1, 2):
        (pod,) = pods_of(cluster, ns, attempt, 1)
        node.run(pod)
        node.finish(pod, exit_code=1)
    wait_for(phase_is(cluster, ns, "flaky", "Failed"))
    status = cluster.status(ns, "flaky")
    assert condition(status, "Failed")["reason"] == "BackoffLimitExceeded"
    assert status["restarts"] == 1 and status["attempt"] == 2
    assert cluster.pods(ns, 3) == []


def test_suspend_and_resume(cluster: Cluster, node: NodeAgent, ns: str):
    cluster.create_job(ns, "pausable", spec(nodes=2))
    start_gang(cluster, node, ns, "pausable", 1, 2)

    cluster.patch_job(ns, "pausable", {"spec": {"runPolicy": {"suspend": True}}})
    wait_for(phase_is(cluster, ns, "pausable", "Suspended"))
    wait_for(lambda: cluster.pods(ns) == [], what="pods deleted on suspend")
    assert condition(cluster.status(ns, "pausable"), "Suspended")["status"] == "True"

    cluster.patch_job(ns, "pausable", {"spec": {"runPolicy": {"suspend": False}}})
    start_gang(cluster, node, ns, "pausable", 2, 2)
    status = cluster.status(ns, "pausable")
    assert status["attempt"] == 2 and status["restarts"] == 0
    assert condition(status, "Suspended")["status"] == "False"


def test_active_deadline(cluster: Cluster, node: NodeAgent, ns: str):
    cluster.create_job(ns, "slow", spec(runPolicy={"activeDeadlineSeconds": 2}))
    (pod,) = pods_of(cluster, ns, 1, 1)
    node.run(pod)
    wait_for(phase_is(cluster, ns, "slow", "Failed"), what="DeadlineExceeded")
    assert condition(cluster.status(ns, "slow"), "Failed")["reason"] == "DeadlineExceeded"
    wait_for(lambda: cluster.pods(ns) == [], what="running worker stopped")


def test_ttl_deletes_the_finished_job_and_its_children(cluster: Cluster, node: NodeAgent, ns: str):
    cluster.create_job(ns, "shortlived", spec(runPolicy={"ttlSecondsAfterFinished": 1}))
    pods, _ = start_gang(cluster, node, ns, "shortlived", 1, 1)
    node.finish(pods[0])
    wait_for(lambda: cluster.job(ns, "shortlived") is None, what="job deleted after its TTL")

    def no_children() -> bool:
        kinds = ("pods", "configmaps", "services", "persistentvolumeclaims")
        return all(cluster.children(kind, ns) == [] for kind in kinds)

    wait_for(no_children, what="children garbage-collected")
    assert "TTLExpired" in reasons(cluster, ns)


def test_operator_restart_never_duplicates_pods(
    cluster: Cluster, node: NodeAgent, operator: OperatorProcess, ns: str
):
    cluster.create_job(ns, "durable", spec(nodes=3))
    pods, _ = start_gang(cluster, node, ns, "durable", 1, 3)

    operator.kill()  # SIGKILL: no graceful shutdown
    node.finish(pods[0], exit_code=1)  # a worker fails while nobody watches
    operator.start()

    new = pods_of(cluster, ns, 2, 3)
    for pod in new:
        node.run(pod)
    wait_for(phase_is(cluster, ns, "durable", "Running"))

    operator.stop()  # and once more, gracefully, with a healthy gang
    operator.start()
    wait_for(lambda: "finetune-operator ready" in operator.logs().split("start #")[-1])
    for _ in range(3):  # several resync periods of the fresh operator
        wait_for(lambda: cluster.status(ns, "durable").get("phase") == "Running")
    assert all(count == 1 for count in cluster.creations("pods", ns).values())
    assert sorted(p["metadata"]["name"] for p in cluster.pods(ns)) == [
        "durable-a2-worker-0",
        "durable-a2-worker-1",
        "durable-a2-worker-2",
    ]
    status = cluster.status(ns, "durable")
    assert status["restarts"] == 1 and status["attempt"] == 2
    assert cluster.creations("configmaps", ns) == {"durable-config": 1}


def test_progress_from_rank_zero_reaches_the_status(
    cluster: Cluster, node: NodeAgent, operator: OperatorProcess, ns: str
):
    """Rank 0 is played by the runtime's own ProgressReporter and ProgressServer (the
    real /progress endpoint, bound to the pod IP the kubelet assigned), fed by hand
    instead of by a training loop."""
    from finetune_runtime.progress.document import format_eta
    from finetune_runtime.progress.reporting import ProgressReporter
    from finetune_runtime.progress.server import ProgressServer

    cluster.create_job(ns, "watched", spec(nodes=2))
    _, ips = start_gang(cluster, node, ns, "watched", 1, 2)
    clock = [0.0]
    reporter = ProgressReporter(200, world_size=2, clock=lambda: clock[0])
    reporter.set_state("training")

    def step(n: int, loss: float) -> None:
        clock[0] += 0.5
        reporter.on_step(n, epoch=n / 200, loss=loss, learning_rate=1e-4, tokens=4096)

    def progress_at(n: int) -> dict[str, Any]:
        return wait_for(
            lambda: (p := cluster.status(ns, "watched").get("progress")) and p["step"] == n and p,
            what=f"status.progress at step {n}",
        )

    with ProgressServer(reporter, host=ips[0], port=operator.progress_port):
        for n in range(1, 43):
            step(n, loss=2.5)
        progress = progress_at(42)
        doc = reporter.document()
        assert progress["state"] == "training"
        assert progress["totalSteps"] == 200 and progress["percent"] == 21.0
        assert progress["loss"] == 2.5 and progress["learningRate"] == 0.0001
        assert progress["eta"] == format_eta(doc.eta_seconds) == "1m19s"
        assert progress["tokensPerSecond"] == 8192.0

        for n in range(43, 101):
            step(n, loss=1.25)
        reporter.on_checkpoint(100, "/checkpoints/checkpoint-100")
        progress = progress_at(100)
        assert progress["lastCheckpoint"]["path"] == "/checkpoints/checkpoint-100"
        assert progress["percent"] == 50.0
        metrics = operator.metrics()
        assert f'finetune_job_loss{{job="watched",namespace="{ns}"}} 1.25' in metrics
        assert f'finetune_job_step{{job="watched",namespace="{ns}"}} 100.0' in metrics

    # Rank 0's endpoint goes away: the last progress stays and the job keeps running.
    for _ in range(3):
        wait_for(phase_is(cluster, ns, "watched", "Running"))
    assert cluster.status(ns, "watched")["progress"]["step"] == 100
    assert operator.healthy()


def test_uninstall_jobs_carry_no_finalizer_so_they_delete_without_the_operator(
    cluster: Cluster, node: NodeAgent, operator: OperatorProcess, ns: str
):
    """helm uninstall first, then delete the jobs: nothing waits for the operator, and
    garbage collection removes the pods."""
    cluster.create_job(ns, "gone", spec())
    start_gang(cluster, node, ns, "gone", 1, 1)
    assert "finetune.dev/finalizer" not in (cluster.job(ns, "gone") or {})["metadata"].get(
        "finalizers", []
    )
    operator.stop()
    try:
        cluster.delete_job(ns, "gone")
        wait_for(lambda: cluster.job(ns, "gone") is None, what="job deleted without operator")
        wait_for(lambda: cluster.pods(ns, live=True) == [], what="pods garbage-collected")
    finally:
        operator.start()


def test_uninstall_the_finalizer_of_older_versions_is_removed(
    cluster: Cluster, operator: OperatorProcess, ns: str
):
    body = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "legacy", "finalizers": ["finetune.dev/finalizer"]},
        "spec": spec(),
    }
    cluster.post(f"apis/finetune.dev/v1alpha1/namespaces/{ns}/finetunejobs", body)
    wait_for(
        lambda: (
            "finetune.dev/finalizer"
            not in ((cluster.job(ns, "legacy") or {})["metadata"].get("finalizers") or [])
        ),
        what="legacy finalizer removed",
    )
    cluster.delete_job(ns, "legacy")
    wait_for(lambda: cluster.job(ns, "legacy") is None, what="job deleted")


def test_credentials_are_referenced_never_read(
    cluster: Cluster,
    node: NodeAgent,
    operator: OperatorProcess,
    operator_identity: Identity,
    ns: str,
):
    secret_values = {
        "AWS_ACCESS_KEY_ID": "AKIAEMULATED123",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t/v4lue",
    }
    cluster.post(
        f"api/v1/namespaces/{ns}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s3"},
            "stringData": secret_values,
        },
    )
    source = {
        "uri": "s3://data/alpaca",
        "endpoint": "http://minio:9000",
        "secretRef": {"name": "s3"},
    }
    cluster.create_job(
        ns,
        "private",
        spec(dataset=source, model={"uri": "s3://models/x", "secretRef": {"name": "s3"}}),
    )
    (pod,) = pods_of(cluster, ns, 1, 1)
    node.run(pod)
    node.finish(pod, exit_code=137)  # retryable: the gang is replaced
    pods_of(cluster, ns, 2, 1)

    fetchers = pod["spec"]["initContainers"]
    for container in fetchers:
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
        assert refs == {
            "AWS_ACCESS_KEY_ID": {"name": "s3", "key": "AWS_ACCESS_KEY_ID"},
            "AWS_SECRET_ACCESS_KEY": {"name": "s3", "key": "AWS_SECRET_ACCESS_KEY"},
        }
    written = json.dumps(
        [
            cluster.job(ns, "private"),
            cluster.events(ns),
            cluster.pods(ns),
            cluster.children("configmaps", ns),
        ]
    )
    for value in secret_values.values():
        assert value not in written
        assert value not in operator.logs()
    operator_calls = cluster.requests_by(operator_identity.username)
    assert operator_calls, "the operator's requests are audited"
    touched = [e for e in operator_calls if (e.get("objectRef") or {}).get("resource") == "secrets"]
    assert not touched, "the operator never reads Secrets"


def test_editing_a_running_job_refreshes_config_and_gang(
    cluster: Cluster, node: NodeAgent, ns: str
):
    cluster.create_job(ns, "edited", spec(nodes=2))
    start_gang(cluster, node, ns, "edited", 1, 2)
    cluster.patch_job(ns, "edited", {"spec": {"config": {"training": {"max_steps": 7}}}})

    def refreshed() -> bool:
        (config_map,) = cluster.children("configmaps", ns)
        return "max_steps: 7" in config_map["data"]["config.yaml"]

    wait_for(refreshed, what="ConfigMap refreshed from the edited spec")
    start_gang(cluster, node, ns, "edited", 2, 2)
    assert cluster.pods(ns, 1) == []
    status = cluster.status(ns, "edited")
    assert status["restarts"] == 0 and status["observedGeneration"] == 2
    assert "SpecChanged" in reasons(cluster, ns)
