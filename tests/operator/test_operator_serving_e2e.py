"""End to end `spec.serve`: a job trains for real, succeeds, and its replicas answer the
OpenAI API through their Service; removing `spec.serve` removes them.

Real: the `finetune-operator` process on the real control plane (tests/kubeharness): it
creates the Deployment and Service, the controller-manager's deployment and replicaset
controllers create the replica pods, the scheduler binds them, the garbage collector removes
them; moto as an S3 server for the dataset; `finetune fetch` + `finetune launch` training the
builtin tiny Llama with LoRA in the worker pod; `finetune serve` in each replica, serving the
adapter from the checkpoint volume (no spec.output, so the replicas mount it read-only), its
`/readyz` deciding the pods' readiness; the official `openai` client. Played (they cannot
exist here): the container runtime, by the node agent (kubeharness.node_agent), which runs
the containers as processes on per-pod loopback IPs and runs the readiness probes; and
kube-proxy, by `NodeAgent.service_addresses`, which lists the endpoints the Service routes
to by the EndpointSlice controller's rules (loopback pod IPs cannot be published).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubeharness.cluster import Cluster, wait_for
from kubeharness.control_plane import free_port
from kubeharness.node_agent import NodeAgent
from kubeharness.operator_process import OperatorProcess
from s3_server import TEST_ACCESS_KEY_ID, TEST_REGION, TEST_SECRET_ACCESS_KEY, MotoS3
from test_operator_real_training import CONFIG, DATA, explain, secret

pytestmark = pytest.mark.slow

COMPONENT = "app.kubernetes.io/component"
NS, NAME, REPLICAS = "real-serving", "served", 2
FINISHED = ("Succeeded", "Failed")
TIMEOUT = 300.0
TRAINING = {**CONFIG["training"], "max_steps": 4, "save_steps": 100, "logging_steps": 1}


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3]:
    server = MotoS3().start()
    client = server.client(
        aws_access_key_id=TEST_ACCESS_KEY_ID, aws_secret_access_key=TEST_SECRET_ACCESS_KEY
    )
    client.create_bucket(Bucket="datasets")
    client.put_object(Bucket="datasets", Key="alpaca/train.jsonl", Body=DATA.read_bytes())
    yield server
    server.stop()


def spec(s3: MotoS3, port: int) -> dict[str, Any]:
    source = {"endpoint": s3.endpoint_url, "region": TEST_REGION, "secretRef": {"name": "s3"}}
    return {
        "config": {**CONFIG, "training": TRAINING},
        "nodes": 1,
        "dataset": {"uri": "s3://datasets/alpaca", **source},
        "serve": {"replicas": REPLICAS, "port": port},
    }


def until(
    cluster: Cluster,
    node: NodeAgent,
    operator: OperatorProcess,
    check: Callable[[dict[str, Any]], bool],
    what: str,
) -> dict[str, Any]:
    """The job's status once `check` holds; on timeout, fail with the logs to look at."""
    try:
        return wait_for(
            lambda: (status := cluster.status(NS, NAME)) and check(status) and status,
            timeout=TIMEOUT,
            interval=0.2,
            what=what,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{explain(cluster, node, operator, NS)}") from None


def serving_pods(cluster: Cluster) -> list[dict[str, Any]]:
    """The replicas still running (not being deleted)."""
    pods = cluster.pods(NS, live=True)
    return [p for p in pods if p["metadata"]["labels"].get(COMPONENT) == "serving"]


def test_serve_replicas_answer_through_the_service_and_go_with_spec_serve(
    cluster: Cluster, node: NodeAgent, operator: OperatorProcess, s3: MotoS3
):
    from openai import OpenAI

    node.process_namespaces.add(NS)
    secret(cluster, NS)
    port = free_port()  # the pods' port; each pod has its own IP, but not every host port is free
    cluster.create_job(NS, NAME, spec(s3, port))
    finished = until(cluster, node, operator, lambda s: s.get("phase") in FINISHED, "finished")
    assert finished["phase"] == "Succeeded", explain(cluster, node, operator, NS)
    until(
        cluster,
        node,
        operator,
        lambda s: (s.get("serving") or {}).get("readyReplicas") == REPLICAS,
        f"{REPLICAS} ready replicas",
    )
    serving = cluster.status(NS, NAME)["serving"]
    assert serving["endpoint"] == f"http://{NAME}-serve.{NS}.svc:{port}/v1"
    assert serving["model"] == NAME and serving["replicas"] == REPLICAS
    pods = serving_pods(cluster)
    assert len(pods) == REPLICAS, explain(cluster, node, operator, NS)
    for pod in pods:
        assert pod["spec"]["nodeName"] == node.node_name
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
        probe = pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]
        assert probe["path"] == "/readyz"  # what the node agent probed to make it Ready

    addresses = node.service_addresses(NS, f"{NAME}-serve")
    assert sorted(addresses) == sorted(f"{p['status']['podIP']}:{port}" for p in pods)
    texts = []
    for address in addresses:
        client = OpenAI(base_url=f"http://{address}/v1", api_key="unused", max_retries=0)
        assert {m.id for m in client.models.list().data} == {NAME, "base"}  # adapter, base
        answer = client.completions.create(
            model=NAME, prompt="### Instruction: Name three colors.", max_tokens=8, temperature=0
        )
        assert answer.usage is not None and answer.usage.completion_tokens > 0
        texts.append(answer.choices[0].text)
    assert texts[0] and texts == [texts[0]] * REPLICAS, texts

    cluster.patch_job(NS, NAME, {"spec": {"serve": None}})
    wait_for(lambda: serving_pods(cluster) == [], timeout=120, what="replicas removed")
    assert cluster.items(f"apis/apps/v1/namespaces/{NS}/deployments") == []
    assert f"{NAME}-serve" not in [s["metadata"]["name"] for s in cluster.children("services", NS)]
    assert "serving" not in cluster.status(NS, NAME)
    cluster.delete_jobs(NS)
