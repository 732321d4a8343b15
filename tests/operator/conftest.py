"""Fixtures for the operator's end-to-end tests: one emulated cluster and operator per module."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from op_cluster import cluster_fixture, kubelet_fixture  # noqa: F401  (shared fixtures)
from op_harness import Cluster, Kubelet, Operator, free_port

_namespaces = itertools.count(1)


@pytest.fixture(scope="module")
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    process = Operator(cluster, tmp_path_factory.mktemp("operator"), progress_port=free_port())
    process.start()
    yield process
    process.stop()


@pytest.fixture()
def ns(cluster: Cluster, operator: Operator, kubelet: Kubelet) -> Iterator[str]:
    """A fresh namespace per test, emptied afterwards (finished jobs would keep the operator
    busy). The operator's log tail is printed, which pytest shows when the test fails."""
    kubelet.auto_run = False
    namespace = f"e2e-{next(_namespaces)}"
    yield namespace
    print(f"----- operator log (tail) -----\n{operator.logs()[-6000:]}")
    if operator.proc is not None and operator.proc.poll() is None:
        cluster.delete_jobs(namespace)
