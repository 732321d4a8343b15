"""Pytest fixtures for the real control plane: one per test session, a namespace per test.

Import them into a conftest (tests/conftest.py does) to use them:
- `kube`: the running ControlPlane (etcd, apiserver, controller-manager, scheduler);
- `cluster`: the admin's `Cluster` facade, with the FineTuneJob CRD applied server-side;
- `operator_kubeconfig`: a kubeconfig for the chart's ServiceAccount (its RBAC applied);
- `node`: the node agent (`NodeAgent`) registered as a Ready Node;
- `kube_namespace`: a fresh namespace for one test, deleted afterwards.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from helm_binary import Tools, find_tools

from kubeharness.api import Api
from kubeharness.cluster import Cluster
from kubeharness.control_plane import ControlPlane
from kubeharness.node_agent import NodeAgent
from kubeharness.operator_process import (
    Identity,
    apply_crd,
    install_chart_rbac,
    service_account_token,
)

OPERATOR_NAMESPACE = "finetune-system"
_namespaces = itertools.count(1)


@pytest.fixture(scope="session")
def kube_tools() -> Tools:
    return find_tools()


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("kube")).start()
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
def cluster(kube: ControlPlane, kube_tools: Tools) -> Cluster:
    admin = Cluster(kube)
    apply_crd(admin, kube_tools.kubectl)
    return admin


@pytest.fixture(scope="session")
def operator_identity(cluster: Cluster, kube_tools: Tools) -> Identity:
    identity, _ = install_chart_rbac(
        cluster, kube_tools.helm, kube_tools.kubectl, OPERATOR_NAMESPACE
    )
    return identity


@pytest.fixture(scope="session")
def operator_kubeconfig(kube: ControlPlane, cluster: Cluster, operator_identity: Identity) -> Path:
    token = service_account_token(cluster, operator_identity)
    return kube.token_kubeconfig(kube.workdir / "operator.kubeconfig", token)


@pytest.fixture(scope="session")
def node(
    kube: ControlPlane, cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeAgent]:
    name = "process-node"
    identity = kube.pki.client(f"node-{name}", f"system:node:{name}", ("system:nodes",))
    agent = NodeAgent(
        Api(kube.url, lambda: kube.session(identity)),
        cluster.api,
        tmp_path_factory.mktemp("node"),
        node_name=name,
        serving=kube.pki.serving(f"kubelet-{name}"),
    ).start()
    yield agent
    agent.stop()


@pytest.fixture()
def kube_namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace, deleted (not awaited) after the test."""
    name = f"t{next(_namespaces)}"
    cluster.create_namespace(name)
    yield name
    cluster.delete(f"api/v1/namespaces/{name}")
