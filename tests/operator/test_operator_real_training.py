"""End to end with real training: operator → pods → fetch → torchrun → trainers → S3.

Real: the `finetune-operator` process on the real control plane (tests/kubeharness: the
scheduler places the pods, the controller-manager binds claims and publishes EndpointSlices),
moto as an S3 server over HTTP, and, in every worker pod, `finetune fetch` then `finetune
launch` → torchrun → two `finetune train` ranks (one per pod, gloo) training the builtin tiny
Llama. Played (it cannot exist here): the container runtime, by the node agent
(kubeharness.node_agent), which runs the containers as local processes with volumes as host
directories, pod IPs on 127.1.x.y and cluster DNS names resolved from the EndpointSlices.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from kubeharness.cluster import Cluster, wait_for
from kubeharness.node_agent import NodeAgent
from kubeharness.operator_process import OperatorProcess
from kubeharness.pod_run import PodNotReady
from s3_server import TEST_ACCESS_KEY_ID, TEST_REGION, TEST_SECRET_ACCESS_KEY, MotoS3

pytestmark = pytest.mark.slow

TOTAL_STEPS = 96
SAVE_STEPS = 8
JOB_TIMEOUT = 300.0
GRACE_CAP = 60.0  # the kubelet's upper bound on a pod's terminationGracePeriodSeconds
DATA = resources.files("finetune_runtime") / "data" / "alpaca_sample.jsonl"

# Deterministic: no dropout, fixed seed, so a resumed run must equal an uninterrupted one.
CONFIG = {
    "base_model": "builtin:tiny-llama",
    "adapter": "lora",
    "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
    "datasets": [{"path": "train.jsonl", "format": "alpaca"}],
    "training": {
        "max_steps": TOTAL_STEPS,
        "batch_size": 2,
        "gradient_accumulation_steps": 1,
        "learning_rate": 0.01,
        "scheduler": "cosine",
        "sequence_len": 256,
        "save_steps": SAVE_STEPS,
        "logging_steps": 4,
        "precision": "fp32",
    },
    "seed": 11,
}


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3]:
    server = MotoS3().start()
    client = server.client(
        aws_access_key_id=TEST_ACCESS_KEY_ID, aws_secret_access_key=TEST_SECRET_ACCESS_KEY
    )
    for bucket in ("datasets", "results"):
        client.create_bucket(Bucket=bucket)
    client.put_object(Bucket="datasets", Key="alpaca/train.jsonl", Body=DATA.read_bytes())
    yield server
    server.stop()


@pytest.fixture(scope="module")
def kubelet(node: NodeAgent) -> Iterator[NodeAgent]:
    """The node agent, honouring grace periods up to GRACE_CAP."""
    cap, node.grace_cap = node.grace_cap, GRACE_CAP
    yield node
    node.grace_cap = cap


def secret(cluster: Cluster, ns: str) -> None:
    """A namespace of processes on the node, holding the S3 credentials Secret."""
    cluster.create_namespace(ns)
    cluster.post(
        f"api/v1/namespaces/{ns}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s3"},
            "stringData": {
                "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY_ID,
                "AWS_SECRET_ACCESS_KEY": TEST_SECRET_ACCESS_KEY,
            },
        },
    )


def job_spec(s3: MotoS3, **extra: Any) -> dict[str, Any]:
    source = {"endpoint": s3.endpoint_url, "region": TEST_REGION, "secretRef": {"name": "s3"}}
    return {
        "config": CONFIG,
        "nodes": 2,
        "dataset": {"uri": "s3://datasets/alpaca", **source},
        "runPolicy": {"backoffLimit": 2},
        **extra,
    }


@dataclass
class Finished:
    ns: str
    name: str
    status: dict[str, Any]
    history: list[dict[str, Any]]  # every distinct status seen while it ran
    claim: Path  # the checkpoint PVC's directory


def run_to_completion(
    cluster: Cluster, kubelet: NodeAgent, ns: str, name: str, on_status: Any = None
) -> Finished:
    """Wait for the job to finish, recording every status the operator wrote on the way."""
    history: list[dict[str, Any]] = []
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        status = cluster.status(ns, name)
        if status and (not history or history[-1] != status):
            history.append(status)
            if on_status is not None:
                on_status(status)
        if status.get("phase") in ("Succeeded", "Failed"):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"{name} did not finish in {JOB_TIMEOUT}s: {history[-1:]}")
    claim = kubelet.claim_dir(ns, f"{name}-checkpoints")
    return Finished(ns, name, history[-1], history, claim)


def explain(cluster: Cluster, kubelet: NodeAgent, operator: OperatorProcess, ns: str) -> str:
    """What to look at when a job did not do what was expected."""
    parts = [f"----- operator log (tail) -----\n{operator.logs()[-4000:]}"]
    for run in kubelet.runs:
        if run.namespace == ns:
            for container in run.containers:
                text = kubelet.log(ns, run.name, container)
                parts.append(f"----- {run.name}/{container} -----\n{text[-3000:]}")
    return "\n".join(parts)


@pytest.fixture(scope="module")
def reference(
    cluster: Cluster, kubelet: NodeAgent, operator: OperatorProcess, s3: MotoS3
) -> Iterator[Finished]:
    """One uninterrupted run: S3 dataset in, adapter and merged model out to S3."""
    ns = "real-reference"
    kubelet.process_namespaces.add(ns)
    secret(cluster, ns)
    output = {
        "uri": "s3://results/runs/reference",
        "endpoint": s3.endpoint_url,
        "region": TEST_REGION,
        "secretRef": {"name": "s3"},
        "merge": True,
    }
    cluster.create_job(ns, "reference", job_spec(s3, output=output))
    done = run_to_completion(cluster, kubelet, ns, "reference")
    print(explain(cluster, kubelet, operator, ns))
    assert done.status["phase"] == "Succeeded", explain(cluster, kubelet, operator, ns)
    yield done
    cluster.delete_jobs(ns)


def adapter(directory: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(directory / "adapter" / "adapter_model.safetensors"))


def test_progress_flows_back_while_training(reference: Finished, operator: OperatorProcess):
    """status.progress is copied from rank 0's real /progress endpoint while it trains."""
    seen = [
        s["progress"] for s in reference.history if s.get("phase") == "Running" and "progress" in s
    ]
    mid = [p for p in seen if 0 < p["step"] < TOTAL_STEPS]
    assert len(mid) >= 2, f"progress was not seen moving while training: {seen}"
    for progress in mid:
        assert progress["totalSteps"] == TOTAL_STEPS
        assert progress["percent"] == round(100 * progress["step"] / TOTAL_STEPS, 1)
        assert progress["loss"] > 0
        if progress["state"] == "training":
            assert re.fullmatch(r"(\d+m)?\d+s", progress["eta"]), progress
    steps = [p["step"] for p in seen]
    assert steps == sorted(steps) and steps[0] < steps[-1], "progress moves forward only"
    with_checkpoint = [p for p in mid if "lastCheckpoint" in p]
    assert with_checkpoint, f"lastCheckpoint was never reported while training: {seen}"
    last = with_checkpoint[-1]["lastCheckpoint"]
    assert last["step"] % SAVE_STEPS == 0 and last["step"] <= with_checkpoint[-1]["step"]
    assert Path(last["path"]) == reference.claim / f"checkpoint-{last['step']}"

    final = reference.status
    assert final["progress"]["percent"] == 100.0 and final["progress"]["state"] == "completed"
    assert final["attempt"] == 1 and final["restarts"] == 0
    assert final["workers"] == {"active": 0, "succeeded": 2, "failed": 0}
    ready = next(c for c in final["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    # The weights are on the checkpoint volume, every checkpoint complete.
    assert (reference.claim / "adapter" / "adapter_model.safetensors").is_file()
    checkpoints = sorted(p.name for p in reference.claim.glob("checkpoint-*"))
    assert checkpoints == sorted(
        f"checkpoint-{n}" for n in range(SAVE_STEPS, TOTAL_STEPS + 1, SAVE_STEPS)
    )
    metrics = operator.metrics()
    assert f'finetune_job_step{{job="reference",namespace="{reference.ns}"}}' in metrics


def test_outputs_are_uploaded_and_recorded(reference: Finished, s3: MotoS3):
    assert reference.status["outputs"] == {
        "adapter": "s3://results/runs/reference/adapter/",
        "merged": "s3://results/runs/reference/merged/",
    }
    client = s3.client(
        aws_access_key_id=TEST_ACCESS_KEY_ID, aws_secret_access_key=TEST_SECRET_ACCESS_KEY
    )

    def keys(prefix: str) -> set[str]:
        listing = client.list_objects_v2(Bucket="results", Prefix=prefix)
        return {item["Key"][len(prefix) :] for item in listing.get("Contents", [])}

    on_volume = {p.name for p in (reference.claim / "adapter").iterdir()}
    assert keys("runs/reference/adapter/") == on_volume
    key = "runs/reference/adapter/adapter_model.safetensors"
    uploaded = client.get_object(Bucket="results", Key=key)["Body"].read()
    assert uploaded == (reference.claim / "adapter" / "adapter_model.safetensors").read_bytes()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= keys("runs/reference/merged/")


def test_credentials_stay_out_of_everything_the_operator_writes(
    reference: Finished, cluster: Cluster, operator: OperatorProcess
):
    import json

    written = json.dumps(
        [reference.history, cluster.events(reference.ns), cluster.pods(reference.ns)]
    )
    for value in (TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY):
        assert value not in written and value not in operator.logs()


def test_a_killed_worker_resumes_from_its_checkpoint_and_loses_nothing(
    cluster: Cluster, kubelet: NodeAgent, operator: OperatorProcess, s3: MotoS3, reference: Finished
):
    """SIGKILL rank 0's trainer once a checkpoint exists: the pod fails, the operator
    replaces the gang, attempt 2 resumes from the newest complete checkpoint, and the
    result equals the uninterrupted reference run."""
    ns, name = "real-crash", "crash"
    kubelet.process_namespaces.add(ns)
    secret(cluster, ns)
    cluster.create_job(ns, name, job_spec(s3))

    def checkpointed() -> int | None:
        try:
            claim = kubelet.claim_dir(ns, f"{name}-checkpoints")
        except PodNotReady:  # the operator has not created it yet
            return None
        done = [  # complete and renamed into place (not a .tmp- directory still)
            int(found.group(1))
            for p in claim.glob("checkpoint-*/COMPLETE")
            if (found := re.fullmatch(r"checkpoint-(\d+)", p.parent.name))
        ]
        return max(done) if done else None

    deadline = time.monotonic() + JOB_TIMEOUT
    while checkpointed() is None:
        assert time.monotonic() < deadline, explain(cluster, kubelet, operator, ns)
        time.sleep(0.02)

    def is_rank(cmdline: list[str]) -> bool:  # the `finetune train` rank torchrun started
        return "finetune_runtime.cli" in cmdline and "torch.distributed.run" not in cmdline

    (rank0,) = kubelet.find(ns, f"{name}-a1-worker-0", "trainer", is_rank)
    rank0.send_signal(signal.SIGKILL)
    at_kill = checkpointed()
    assert at_kill is not None and at_kill < TOTAL_STEPS, "training ended before the kill"

    done = run_to_completion(cluster, kubelet, ns, name)
    context = explain(cluster, kubelet, operator, ns)
    assert done.status["phase"] == "Succeeded", context
    assert done.status["restarts"] == 1 and done.status["attempt"] == 2, context
    print(context)
    (restarted,) = [e for e in cluster.events(ns) if e["reason"] == "Restarting"]
    assert "worker crash-a1-worker-0 failed" in restarted["message"]
    assert [s["phase"] for s in done.history].count("Restarting") >= 1

    log = kubelet.log(ns, f"{name}-a2-worker-0", "trainer")
    resumed = re.search(r"resumed from \S*/checkpoint-(\d+): step (\d+)", log)
    assert resumed, context
    step = int(resumed.group(1))
    assert 0 < step < TOTAL_STEPS and step >= at_kill

    import json

    summary = json.loads((done.claim / "train_summary.json").read_text())
    assert summary["steps"] == summary["total_steps"] == TOTAL_STEPS
    assert [h["step"] for h in summary["losses"]] == list(range(1, TOTAL_STEPS + 1))

    got, want = adapter(done.claim), adapter(reference.claim)
    assert set(got) == set(want)
    worst = max(float((got[k] - want[k]).abs().max()) for k in want)
    assert worst <= 1e-5, f"resumed adapter differs from the uninterrupted run by {worst}"
    cluster.delete_jobs(ns)


def test_suspend_sigterms_the_trainers_which_checkpoint_within_the_grace_period(
    cluster: Cluster, kubelet: NodeAgent, operator: OperatorProcess, s3: MotoS3
):
    """Suspending deletes the workers; the kubelet sends SIGTERM and waits the pod's
    terminationGracePeriodSeconds; the trainer finishes its step, checkpoints and exits 143
    well within it. Periodic checkpoints are off, so the only one is the SIGTERM one, and
    the resumed attempt starts from exactly there."""
    ns, name, total = "real-suspend", "pausable", 200
    kubelet.process_namespaces.add(ns)
    secret(cluster, ns)
    training = {**CONFIG["training"], "max_steps": total, "save_steps": 10 * total}
    spec = job_spec(s3, nodes=1, config={**CONFIG, "training": {**training, "logging_steps": 1}})
    spec["runPolicy"]["terminationGracePeriodSeconds"] = 45
    cluster.create_job(ns, name, spec)
    first = f"{name}-a1-worker-0"
    wait_for(
        lambda: re.search(rf"step=\d+/{total}", kubelet.log(ns, first, "trainer")),
        timeout=JOB_TIMEOUT,
        what="training to start",
    )
    (pod,) = cluster.pods(ns)
    assert pod["spec"]["terminationGracePeriodSeconds"] == 45

    cluster.patch_job(ns, name, {"spec": {"runPolicy": {"suspend": True}}})
    wait_for(lambda: cluster.status(ns, name).get("phase") == "Suspended", what="Suspended")
    wait_for(lambda: cluster.pods(ns) == [], what="workers deleted")
    trainer = kubelet.run_of(ns, first).containers["trainer"]
    wait_for(lambda: trainer.exit_code is not None, timeout=GRACE_CAP + 30, what="exit")
    context = explain(cluster, kubelet, operator, ns)
    assert trainer.exit_code == 143, context  # preempted after checkpointing, not SIGKILLed
    stopped = re.search(
        rf"stopped by SIGTERM at step (\d+)/{total}", kubelet.log(ns, first, "trainer")
    )
    assert stopped, context
    step = int(stopped.group(1))
    assert 0 < step < total
    claim = kubelet.claim_dir(ns, f"{name}-checkpoints")
    assert [p.name for p in claim.glob("checkpoint-*")] == [f"checkpoint-{step}"]
    assert (claim / f"checkpoint-{step}" / "COMPLETE").is_file()

    cluster.patch_job(ns, name, {"spec": {"runPolicy": {"suspend": False}}})
    done = run_to_completion(cluster, kubelet, ns, name)
    context = explain(cluster, kubelet, operator, ns)
    assert done.status["phase"] == "Succeeded", context
    assert done.status["attempt"] == 2 and done.status["restarts"] == 0, context
    log = kubelet.log(ns, f"{name}-a2-worker-0", "trainer")
    assert re.search(rf"resumed from \S*/checkpoint-{step}: step {step},", log), context
    import json

    summary = json.loads((done.claim / "train_summary.json").read_text())
    assert summary["steps"] == total
    assert [h["step"] for h in summary["losses"]] == list(range(1, total + 1))
    cluster.delete_jobs(ns)


def test_permanent_failure_bad_dataset_row_fails_the_job_with_the_pods_last_log_lines(
    cluster: Cluster, kubelet: NodeAgent, operator: OperatorProcess, s3: MotoS3
):
    """A bad row is a user error (exit 3 from the trainer, passed on by `finetune launch`):
    the job fails at once, no gang is replaced, and the condition carries the trainer's last
    log lines, read through the real apiserver's pods/log from the node's log endpoint."""
    ns, name = "real-bad-row", "badrow"
    kubelet.process_namespaces.add(ns)
    secret(cluster, ns)
    rows = DATA.read_text().splitlines()[:6]
    rows[3] = '{"instruction": "what is missing?"}'  # no `output`: nothing to train on
    client = s3.client(
        aws_access_key_id=TEST_ACCESS_KEY_ID, aws_secret_access_key=TEST_SECRET_ACCESS_KEY
    )
    client.put_object(Bucket="datasets", Key="bad/train.jsonl", Body="\n".join(rows) + "\n")
    spec = job_spec(s3, nodes=1)
    spec["dataset"]["uri"] = "s3://datasets/bad"
    cluster.create_job(ns, name, spec)
    done = run_to_completion(cluster, kubelet, ns, name)
    context = explain(cluster, kubelet, operator, ns)
    assert done.status["phase"] == "Failed", context
    assert done.status["attempt"] == 1 and done.status["restarts"] == 0, context
    failed = next(c for c in done.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PermanentFailure", context
    assert "exited with code 3" in failed["message"], context
    tail = failed["message"].split("Last log lines:", 1)
    assert len(tail) == 2, context
    assert "train.jsonl" in tail[1] and ":4" in tail[1], context  # the file and line named
    for value in (TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY):
        assert value not in failed["message"]
    cluster.delete_jobs(ns)
