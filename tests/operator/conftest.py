"""Fixtures for the operator's end-to-end tests on the real control plane (tests/kubeharness):
one operator process per module, authenticated as the chart's ServiceAccount, and a fresh
namespace per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubeharness.cluster import Cluster
from kubeharness.control_plane import free_port
from kubeharness.node_agent import NodeAgent
from kubeharness.operator_process import OperatorProcess

_namespaces = itertools.count(1)


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, operator_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        operator_kubeconfig, tmp_path_factory.mktemp("operator"), progress_port=free_port()
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture()
def ns(cluster: Cluster, operator: OperatorProcess, node: NodeAgent) -> Iterator[str]:
    """A fresh namespace per test, its jobs deleted afterwards (finished jobs would keep the
    operator busy). The operator's log tail is printed, which pytest shows on failure."""
    node.auto_run = False
    namespace = f"e2e-{next(_namespaces)}"
    cluster.create_namespace(namespace)
    yield namespace
    print(f"----- operator log (tail) -----\n{operator.logs()[-6000:]}")
    if operator.proc is not None and operator.proc.poll() is None:
        cluster.delete_jobs(namespace)
    cluster.delete(f"api/v1/namespaces/{namespace}")
