"""Leader failover on the real control plane: two operator replicas with the chart's RBAC
(its leader-election Role included) elect a leader through a real coordination.k8s.io
Lease; the leader is SIGKILLed mid-gang and the standby finishes the gang without
creating any pod twice.

Real: etcd, kube-apiserver, controller-manager, scheduler, both `finetune-operator`
processes (tests/kubeharness). Played: the node agent moves the scripted pods' phases.
"""

from __future__ import annotations

from pathlib import Path

import pytest

kubeharness = pytest.importorskip("kubeharness.operator_process", reason="real control plane")

from kubeharness.cluster import wait_for  # noqa: E402
from kubeharness.control_plane import free_port  # noqa: E402

pytestmark = pytest.mark.slow
OPERATOR_NAMESPACE = "finetune-system"  # where the chart's leader-election Role lives
CONFIG = {
    "base_model": "builtin:tiny-llama",
    "datasets": [{"path": "train.jsonl"}],
    "training": {"max_steps": 20},
}


def leading(op) -> bool:
    return "became the leader" in op.logs()


def test_leader_killed_mid_gang_on_the_real_control_plane(
    cluster, node, operator_kubeconfig: Path, kube_namespace: str, tmp_path: Path
):
    ns = kube_namespace
    args = [
        "--all-namespaces",
        "--leader-elect",
        "--leader-election-namespace",
        OPERATOR_NAMESPACE,
        "--leader-election-id",
        f"failover-{ns}",
        "--leader-lease-seconds",
        "4",
    ]
    replicas = []
    for i in range(2):
        workdir = tmp_path / f"op{i}"
        workdir.mkdir()
        replicas.append(
            kubeharness.OperatorProcess(
                operator_kubeconfig, workdir, progress_port=free_port(), args=args
            )
        )
    first, second = replicas
    try:
        first.start()
        wait_for(lambda: leading(first), 60, what="the first replica leads")
        second.start()
        assert not leading(second)

        cluster.create_job(ns, "gang", {"config": CONFIG, "nodes": 3})
        pods = wait_for(lambda: len(p := cluster.pods(ns, 1)) == 3 and p, 60, what="attempt 1")
        node.run(pods[0])  # mid-gang: one worker runs, two are pending
        first.kill()

        wait_for(lambda: leading(second), 60, what="the standby takes over")
        for pod in pods[1:]:
            node.run(pod)
        wait_for(lambda: cluster.status(ns, "gang").get("phase") == "Running", 60, what="Running")
        assert all(count == 1 for count in cluster.creations("pods", ns).values())
        assert cluster.status(ns, "gang")["attempt"] == 1
        lease = cluster.get(
            f"apis/coordination.k8s.io/v1/namespaces/{OPERATOR_NAMESPACE}/leases/failover-{ns}"
        )
        assert lease is not None and lease["spec"]["leaseTransitions"] == 1
    finally:
        for op in replicas:
            print(f"----- {op.workdir.name} log (tail) -----\n{op.logs()[-3000:]}")
            op.stop()
