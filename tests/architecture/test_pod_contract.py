"""The pod contract (finetune_runtime.contract) end to end: what the operator writes into a
pod is what the runtime reads, and the rules both sides apply give the same answers.

No mocks: real worker manifests from `finetune_operator.manifests`, the runtime's real
progress server on loopback read by the operator's real progress client, the real CLI.
"""

from __future__ import annotations

import ast
import logging
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from finetune_operator import manifests as m
from finetune_operator import status as st
from finetune_operator.crd import crd
from finetune_operator.jobref import JobRef
from finetune_operator.pod_facts import progress_url
from finetune_operator.pod_parts import PodSettings
from finetune_operator.progress_client import fetch_progress
from finetune_operator.spec import SpecError, parse_spec, validate_job
from finetune_runtime import contract
from finetune_runtime.cli import main
from finetune_runtime.errors import ConfigError
from finetune_runtime.progress.reporting import ProgressReporter
from finetune_runtime.progress.server import ProgressServer
from finetune_runtime.storage import publish

CONFIG = {"base_model": "builtin:tiny-llama", "datasets": [{"path": "train.jsonl"}]}
OUTPUT = {"uri": "s3://bucket/runs/a", "endpoint": "http://minio:9000", "region": "eu-west-1"}


def body(name: str = "llama", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": "ml", "uid": f"uid-{name}"},
        "spec": {"config": CONFIG, **spec},
    }


def worker(job: dict[str, Any], attempt: int, rank: int, port: int = 9400) -> dict[str, Any]:
    settings = PodSettings(default_image="runtime:test", progress_port=port)
    spec = parse_spec(job["spec"])
    return m.build_worker_pod(JobRef.from_body(job), spec, attempt, rank, settings)


def plain_env(pod: dict[str, Any]) -> dict[str, str]:
    (trainer,) = pod["spec"]["containers"]
    return {e["name"]: e["value"] for e in trainer["env"] if "value" in e}


def test_the_operator_writes_exactly_the_reserved_worker_env():
    secret = {"name": "s3", "accessKeyIdKey": "id", "secretAccessKeyKey": "key"}
    job = body(output={**OUTPUT, "merge": True, "secretRef": secret})
    (trainer,) = worker(job, attempt=2, rank=1)["spec"]["containers"]
    assert {e["name"] for e in trainer["env"]} == contract.WORKER_ENV
    env = plain_env(worker(job, attempt=2, rank=1))
    assert env[contract.ENV_NODE_RANK] == "1" and env[contract.ENV_ATTEMPT] == "2"
    assert env[contract.ENV_CACHE] == contract.CACHE_DIR
    assert env[contract.ENV_MASTER_PORT] == str(contract.RENDEZVOUS_PORT)
    # the reserved list is enforced twice: by the spec model and by the CRD's CEL rule
    rules = str(crd())
    assert all(f"'{name}'" in rules for name in contract.WORKER_ENV)
    taken = {"name": contract.ENV_JOB_NAME, "value": "mine"}
    with pytest.raises(SpecError, match=contract.ENV_JOB_NAME):
        validate_job(body(env=[taken]))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_rank0_serves_progress_where_the_operator_looks_naming_job_and_attempt(
    monkeypatch: pytest.MonkeyPatch,
):
    job = body(name="llama-7b")
    pods = [worker(job, attempt=3, rank=0, port=free_port()), worker(job, attempt=3, rank=1)]
    for name, value in plain_env(pods[0]).items():  # rank 0's container environment
        monkeypatch.setenv(name, value)
    reporter = ProgressReporter(100)  # reads the job and attempt from that environment
    reporter.set_state("training")
    with ProgressServer(reporter) as server:  # and the port
        for pod in pods:
            pod["status"] = {"phase": "Running", "podIP": "127.0.0.1"}
        url = progress_url(pods, attempt=3)
        assert url == f"http://127.0.0.1:{server.port}{contract.PROGRESS_PATH}"
        doc = fetch_progress(url)
    assert doc is not None
    assert (doc["jobName"], doc["attempt"], doc["state"]) == ("llama-7b", 3, "training")
    assert st.progress_status(doc)["state"] == "training"


def test_outside_a_pod_the_document_names_no_job():
    doc = ProgressReporter(10, env={}).document().to_json_dict()
    assert "jobName" not in doc and "attempt" not in doc
    odd = ProgressReporter(10, env={contract.ENV_JOB_NAME: "j", contract.ENV_ATTEMPT: "x"})
    assert odd.document().attempt is None  # a label, never fatal


def test_launch_logs_which_job_and_attempt_it_runs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    for name, value in plain_env(worker(body(name="llama"), attempt=4, rank=0)).items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.INFO, logger="finetune_runtime")
    assert main(["launch", "--config", contract.CONFIG_PATH, "--dry-run"]) == 0
    assert "FineTuneJob llama attempt 4: node 0/1" in caplog.text


@pytest.mark.parametrize("adapter", ["lora", "none"])
@pytest.mark.parametrize("merge", [False, True])
def test_status_outputs_are_where_rank0_uploads(adapter: str, merge: bool):
    spec = parse_spec({"config": CONFIG, "output": {**OUTPUT, "merge": merge}})
    reported = st.outputs_status(spec.output, adapter)
    target = publish.OutputTarget(OUTPUT["uri"], merge=merge)
    assert reported == publish.output_uris(target, contract.weights_dir_name(adapter))
    assert set(reported) == {contract.weights_dir_name(adapter)} | (
        {contract.OUTPUT_MERGED} if merge else set()
    )


@pytest.mark.parametrize("adapter", ["none", "prefix_tuning"])
def test_merge_is_refused_alike_by_operator_and_trainer(adapter: str):
    reason = contract.merge_refusal(adapter)
    assert reason is not None
    config = {**CONFIG, "adapter": adapter}
    with pytest.raises(SpecError) as refused:
        validate_job({**body(), "spec": {"config": config, "output": {**OUTPUT, "merge": True}}})
    assert reason in str(refused.value) and "spec.output.merge" in str(refused.value)
    with pytest.raises(ConfigError, match="--merge") as flagged:
        publish.check_target(publish.OutputTarget(OUTPUT["uri"], merge=True), adapter)
    assert reason in str(flagged.value)
    assert contract.merge_refusal("lora") is None


ENV_NAME = re.compile(r"^(FINETUNE_(?!OPERATOR_)[A-Z0-9_]+|PET_[A-Z0-9_]+)$")


def test_pod_env_names_are_spelled_only_in_the_contract():
    """A bare "FINETUNE_..."/"PET_..." string anywhere else is a second spelling (the
    operator's own FINETUNE_OPERATOR_* settings never reach a pod and are exempt)."""
    root = Path(contract.__file__).resolve().parents[2]
    sources = [*(root / "runtime").rglob("*.py"), *(root / "operator").rglob("*.py")]
    assert len(sources) > 100
    spelled = [
        f"{path.relative_to(root)}:{node.lineno}: {node.value}"
        for path in sources
        if path.resolve() != Path(contract.__file__).resolve()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        if ENV_NAME.match(node.value)
    ]
    assert not spelled, "use finetune_runtime.contract's constant instead:\n" + "\n".join(spelled)
    assert ENV_NAME.match(contract.ENV_OUTPUT_URI) and ENV_NAME.match(contract.ENV_NNODES)
