"""The emulated-cluster fixtures shared by every suite that runs the real operator:
one kmock-backed API server and one kubelet stand-in per test module. Import them into
a conftest or test module to use them; pytest registers them as `cluster` and `kubelet`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from op_harness import Cluster, Kubelet


@pytest.fixture(scope="module", name="cluster")
def cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    emulated = Cluster(tmp_path_factory.mktemp("cluster")).start()
    yield emulated
    emulated.stop()


@pytest.fixture(scope="module", name="kubelet")
def kubelet_fixture(cluster: Cluster) -> Iterator[Kubelet]:
    agent = Kubelet(cluster)
    yield agent
    agent.stop()
