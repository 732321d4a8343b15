"""The test control plane itself behaves as a cluster: the scheduler binds pods to the node
agent's Node, which runs them as processes and deletes them gracefully; claims are bound;
a headless Service's names resolve from its EndpointSlices; RBAC and the audit log work."""

from __future__ import annotations

import sys
import time

import pytest
from kubeharness.api import ApiError
from kubeharness.cluster import Cluster, wait_for
from kubeharness.node_agent import NodeAgent

pytestmark = pytest.mark.slow

PY = sys.executable


def pod(name: str, code: str, **spec) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "probe"}},
        "spec": {
            "containers": [{"name": "main", "image": "python", "command": [PY, "-c", code]}],
            "restartPolicy": "Never",
            # The node agent plays no projected token volumes (the operator's pods mount none).
            "automountServiceAccountToken": False,
            **spec,
        },
    }


def phase(cluster: Cluster, ns: str, name: str) -> str:
    found = cluster.get(f"api/v1/namespaces/{ns}/pods/{name}")
    return ((found or {}).get("status") or {}).get("phase", "")


def test_scheduled_pod_runs_as_a_process_and_reports_its_exit(
    cluster: Cluster, node: NodeAgent, kube_namespace: str
):
    ns = kube_namespace
    node.process_namespaces.add(ns)
    cluster.post(f"api/v1/namespaces/{ns}/pods", pod("ok", "print('hello')"))
    cluster.post(f"api/v1/namespaces/{ns}/pods", pod("bad", "raise SystemExit(3)"))
    wait_for(lambda: phase(cluster, ns, "ok") == "Succeeded", 60, what="ok Succeeded")
    wait_for(lambda: phase(cluster, ns, "bad") == "Failed", 60, what="bad Failed")
    bad = cluster.get(f"api/v1/namespaces/{ns}/pods/bad")
    assert bad["spec"]["nodeName"] == node.node_name  # bound by the real scheduler
    (status,) = bad["status"]["containerStatuses"]
    assert status["state"]["terminated"]["exitCode"] == 3
    assert "hello" in node.log(ns, "ok", "main")


def test_pods_log_reaches_the_node_through_the_apiserver(
    cluster: Cluster, node: NodeAgent, kube_namespace: str
):
    """`pods/log` (what the operator reads for a failed worker's last lines, and `kubectl
    logs`) is proxied by the real apiserver to the node's log endpoint over TLS, verified
    against --kubelet-certificate-authority; tailLines and limitBytes as a kubelet honours them."""
    ns = kube_namespace
    node.process_namespaces.add(ns)
    code = "for i in range(50): print(f'line {i}')\nraise SystemExit(3)"
    cluster.post(f"api/v1/namespaces/{ns}/pods", pod("talker", code))
    wait_for(lambda: phase(cluster, ns, "talker") == "Failed", 60, what="talker Failed")

    def log(**params: int) -> str:
        url = f"{cluster.url}/api/v1/namespaces/{ns}/pods/talker/log"
        response = cluster.api.http.get(url, params={"container": "main", **params}, timeout=15)
        assert response.status_code == 200, response.text
        return response.text

    assert log().splitlines() == [f"line {i}" for i in range(50)]
    assert log(tailLines=3) == "line 47\nline 48\nline 49\n"
    assert log(tailLines=3, limitBytes=10) == "line 47\nli"
    missing = cluster.api.http.get(
        f"{cluster.url}/api/v1/namespaces/{ns}/pods/nobody/log", timeout=15
    )
    assert missing.status_code == 404


def test_deletion_is_graceful_sigterm_then_the_object_goes(
    cluster: Cluster, node: NodeAgent, kube_namespace: str
):
    ns = kube_namespace
    node.process_namespaces.add(ns)
    trap = (
        "import signal, sys, time\n"
        "def stop(*_):\n"
        "    print('got SIGTERM', flush=True)\n"
        "    sys.exit(7)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "print('up', flush=True)\n"
        "time.sleep(600)\n"
    )
    cluster.post(f"api/v1/namespaces/{ns}/pods", pod("sleeper", trap))
    wait_for(lambda: "up" in node.log(ns, "sleeper", "main"), 60, what="sleeper running")
    cluster.delete(f"api/v1/namespaces/{ns}/pods/sleeper")
    # The apiserver keeps the object (deletionTimestamp) until the node has stopped it.
    found = cluster.get(f"api/v1/namespaces/{ns}/pods/sleeper")
    assert found is not None and found["metadata"].get("deletionTimestamp")
    wait_for(lambda: cluster.get(f"api/v1/namespaces/{ns}/pods/sleeper") is None, 60)
    assert "got SIGTERM" in node.log(ns, "sleeper", "main")


def service(name: str, publish_not_ready: bool = False) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "clusterIP": "None",
            "selector": {"app": "probe"},
            "ports": [{"port": 80}],
            "publishNotReadyAddresses": publish_not_ready,
        },
    }


def test_headless_service_names_resolve_by_the_endpointslice_rules(
    cluster: Cluster, node: NodeAgent, kube_namespace: str
):
    ns = kube_namespace
    node.process_namespaces.add(ns)
    cluster.post(f"api/v1/namespaces/{ns}/services", service("gang"))
    cluster.post(f"api/v1/namespaces/{ns}/services", service("eager", publish_not_ready=True))
    sleeper = "import time; time.sleep(600)"
    cluster.post(
        f"api/v1/namespaces/{ns}/pods", pod("r0", sleeper, hostname="r0", subdomain="gang")
    )
    ip = wait_for(lambda: node.resolve(f"r0.gang.{ns}.svc.cluster.local"), 60, what="DNS")
    assert ip == cluster.get(f"api/v1/namespaces/{ns}/pods/r0")["status"]["podIP"]
    assert node.resolve(f"r1.gang.{ns}.svc") is None

    # Terminating: out of DNS, unless the Service publishes not-ready addresses (then a
    # terminating pod keeps answering, as it does in a cluster).
    body = pod("e0", sleeper, hostname="e0", subdomain="eager", terminationGracePeriodSeconds=5)
    body["spec"]["containers"][0]["command"] = [
        PY,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, lambda *a: None); time.sleep(600)",
    ]
    cluster.post(f"api/v1/namespaces/{ns}/pods", body)
    wait_for(lambda: node.resolve(f"e0.eager.{ns}.svc"), 60, what="e0 in DNS")
    cluster.delete(f"api/v1/namespaces/{ns}/pods/e0")
    cluster.delete(f"api/v1/namespaces/{ns}/pods/r0")
    wait_for(lambda: node.resolve(f"r0.gang.{ns}.svc") is None, 30, what="r0 out of DNS")
    terminating = cluster.get(f"api/v1/namespaces/{ns}/pods/e0")
    assert terminating is not None and terminating["metadata"].get("deletionTimestamp")
    assert node.resolve(f"e0.eager.{ns}.svc") == terminating["status"]["podIP"]


def test_claims_are_provisioned_and_bound(cluster: Cluster, node: NodeAgent, kube_namespace: str):
    ns = kube_namespace
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    cluster.post(f"api/v1/namespaces/{ns}/persistentvolumeclaims", claim)
    wait_for(lambda: node.provisioner.directory_of(ns, "data"), 60, what="claim bound")


def test_rbac_is_enforced_and_requests_are_audited(cluster: Cluster, node: NodeAgent):
    # The node's identity may not list Secrets cluster-wide (Node authorizer + RBAC).
    with pytest.raises(ApiError) as refused:
        node.api.items("api/v1/secrets")
    assert refused.value.status == 403
    time.sleep(0.1)
    denied = [
        e
        for e in cluster.audit()
        if e["user"]["username"] == f"system:node:{node.node_name}"
        and (e.get("objectRef") or {}).get("resource") == "secrets"
    ]
    assert denied and denied[-1]["responseStatus"]["code"] == 403
