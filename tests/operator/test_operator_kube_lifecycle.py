"""Uninstall on the real control plane: with the operator gone (helm uninstall), jobs
delete at once (no finalizer waits for it), garbage collection removes their pods, and
the CRD then deletes without hanging. (Deleting the CRD while jobs still exist also
completes, but the garbage collector cannot resolve the vanished owner kind and leaves
their pods behind: docs/install.md says to delete the jobs first.)

Real: etcd, kube-apiserver, kube-controller-manager (garbage collector), kube-scheduler,
the `finetune-operator` process with the chart's RBAC (tests/kubeharness). Played: the
node agent runs no containers for these pods (they never need to run).
"""

from __future__ import annotations

from pathlib import Path

import pytest

kubeharness = pytest.importorskip("kubeharness.operator_process", reason="real control plane")

from kubeharness.cluster import wait_for  # noqa: E402
from kubeharness.control_plane import free_port  # noqa: E402

pytestmark = pytest.mark.slow
CRD_NAME = "customresourcedefinitions/finetunejobs.finetune.dev"
CRDS = "apis/apiextensions.k8s.io/v1"
CONFIG = {
    "base_model": "builtin:tiny-llama",
    "datasets": [{"path": "train.jsonl"}],
    "training": {"max_steps": 20},
}


def test_uninstall_operator_then_jobs_then_crd_never_hangs(
    cluster, kube_tools, operator_kubeconfig: Path, kube_namespace: str, tmp_path: Path
):
    ns = kube_namespace
    operator = kubeharness.OperatorProcess(
        operator_kubeconfig, tmp_path, progress_port=free_port()
    ).start()
    try:
        cluster.create_job(ns, "llama", {"config": CONFIG, "nodes": 2})
        wait_for(lambda: len(cluster.pods(ns)) == 2, 60, what="the gang")
        job = cluster.job(ns, "llama")
        assert not (job or {})["metadata"].get("finalizers")
    finally:
        operator.stop()  # helm uninstall: the operator is gone first
    try:
        cluster.delete_job(ns, "llama")
        wait_for(lambda: cluster.job(ns, "llama") is None, 30, what="job deleted")
        wait_for(lambda: cluster.pods(ns, live=True) == [], 90, what="pods garbage-collected")
        cluster.delete(f"{CRDS}/{CRD_NAME}")
        wait_for(lambda: cluster.get(f"{CRDS}/{CRD_NAME}") is None, 60, what="CRD deleted")
    finally:
        kubeharness.apply_crd(cluster, kube_tools.kubectl)  # for the tests after this one
