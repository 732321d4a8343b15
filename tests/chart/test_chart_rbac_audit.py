"""The chart's RBAC allows every API call the real operator makes, and nothing it never needs.

The real `finetune-operator` process runs with the exact arguments the chart's Deployment
renders, against the emulated apiserver of the operator tests (tests/operator/op_harness.py),
through a job's life: creation, a failed worker and gang replacement, success, TTL deletion, a
config change (ConfigMap patch), an invalid spec, suspension. Every request it sends is recorded
server-side, turned into RBAC request attributes and checked against the Roles/ClusterRoles and
bindings the chart renders, the way the API server's RBAC authorizer would.

Played, because it cannot exist here: the kubelet (pod phases, as in the operator's own e2e
tests). The emulator does not enforce RBAC itself; this test is that enforcement.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import aiohttp.web
import pytest
from chart_helpers import NAMESPACE, by_kind

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

import op_harness  # noqa: E402
from op_harness import Cluster, Kubelet, Operator, free_port, wait_for  # noqa: E402

pytestmark = pytest.mark.slow

Render = Callable[..., list[dict[str, Any]]]
CONFIG = {
    "base_model": "builtin:tiny-llama",
    "datasets": [{"path": "train.jsonl"}],
    "training": {"max_steps": 20},
}
WATCHED = "team-a"
# Granted although no request uses it: the OwnerReferencesPermissionEnforcement admission plugin
# checks it when the operator sets blockOwnerDeletion on its children's owner references.
NOT_A_CALL = {("finetune.dev", "finetunejobs/finalizers", "update")}


@dataclass(frozen=True)
class Attributes:
    """What the RBAC authorizer sees of a request."""

    verb: str
    group: str
    resource: str  # "pods" or "finetunejobs/status"
    namespace: str | None

    def __str__(self) -> str:
        where = f" in {self.namespace}" if self.namespace else " (cluster-scoped)"
        return f"{self.verb} {self.group or 'core'}/{self.resource}{where}"


def attributes(request: Any) -> Attributes | None:
    """Request attributes of a kmock request; None for discovery (non-resource URLs)."""
    if request.resource is None or request.resource.plural is None:
        return None  # /api, /apis/GROUP/VERSION: discovery, allowed to every client
    method = str(request.method).upper().rsplit(".", 1)[-1]
    watching = str(request.params.get("watch", "")).lower() in ("true", "1")
    verb = {
        "GET": "watch" if watching else ("get" if request.name else "list"),
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if request.name else "deletecollection",
    }[method]
    resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
    return Attributes(verb, request.resource.group or "", resource, request.namespace)


def allows(rule: dict[str, Any], attrs: Attributes) -> bool:
    return (
        attrs.group in rule["apiGroups"]
        and attrs.resource in rule["resources"]
        and attrs.verb in rule["verbs"]
        and not rule.get("resourceNames")
    )


def authorized(objects: list[dict[str, Any]], sa: str, attrs: Attributes) -> bool:
    """RBAC: ClusterRoleBindings grant everywhere, RoleBindings only in their namespace."""
    subject = {"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}
    roles = {
        (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o["rules"]
        for o in by_kind(objects, "ClusterRole") + by_kind(objects, "Role")
    }
    for binding in by_kind(objects, "ClusterRoleBinding") + by_kind(objects, "RoleBinding"):
        if subject not in binding["subjects"]:
            continue
        scope = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        if scope is not None and attrs.namespace != scope:
            continue
        ref = binding["roleRef"]
        rules = roles.get((ref["kind"], scope if ref["kind"] == "Role" else None, ref["name"]), [])
        if any(allows(rule, attrs) for rule in rules):
            return True
    return False


class NamespaceListingApiServer(op_harness.ApiServer):
    """The harness's apiserver, plus `/api/v1/namespaces`, which kmock cannot route (its path
    parser reads `namespaces` as the start of a namespaced path and fails). kopf lists and
    watches namespaces when given --namespace; these calls are recorded for the audit."""

    calls: ClassVar[list[Attributes]] = []

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw_request.path.rstrip("/") != "/api/v1/namespaces":
            return await super().__call__(raw_request)
        watching = raw_request.query.get("watch", "").lower() in ("true", "1")
        self.calls.append(Attributes("watch" if watching else "list", "", "namespaces", None))
        if watching:  # an idle watch stream: no namespace comes or goes
            response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(raw_request)
            await asyncio.sleep(float(raw_request.query.get("timeoutSeconds") or 30))
            return response
        items = [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "uid": name, "resourceVersion": "1"},
                "status": {"phase": "Active"},
            }
            for name in (WATCHED, NAMESPACE, "default")
        ]
        return aiohttp.web.json_response(
            {
                "apiVersion": "v1",
                "kind": "NamespaceList",
                "metadata": {"resourceVersion": "1"},
                "items": items,
            }
        )


class ChartOperator(Operator):
    """The real operator started with the Deployment's rendered args (ports made free)."""

    def __init__(self, cluster: Cluster, workdir: Path, args: list[str]) -> None:
        super().__init__(cluster, workdir, progress_port=free_port())
        self.args = args

    def start(self) -> ChartOperator:
        self.metrics_port, self.health_port = free_port(), free_port()
        args = list(self.args)
        args[args.index("--metrics-port") + 1] = str(self.metrics_port)
        args[args.index("--health-port") + 1] = str(self.health_port)
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "FINETUNE_"))
        }
        env |= {
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "NO_PROXY": "*",
            "no_proxy": "*",
            "FINETUNE_OPERATOR_RESYNC_SECONDS": "0.5",
        }
        extra = ["--bind-address", "127.0.0.1", "--progress-port", str(self.progress_port)]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [self.executable(), *args, *extra, "--log-format", "plain"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self.healthy, timeout=60, interval=0.2, what="operator /healthz")
        return self


@pytest.fixture
def emulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Cluster, Kubelet]]:
    monkeypatch.setattr(op_harness, "ApiServer", NamespaceListingApiServer)
    NamespaceListingApiServer.calls.clear()
    cluster = Cluster(_dir(tmp_path / "cluster")).start()
    kubelet = Kubelet(cluster)
    yield cluster, kubelet
    kubelet.stop()
    cluster.stop()


def pods_of(cluster: Cluster, ns: str, attempt: int, count: int) -> list[dict[str, Any]]:
    return wait_for(
        lambda: (pods := cluster.pods(ns, attempt)) and len(pods) == count and pods,
        what=f"{count} pods of attempt {attempt}",
    )


def phase(cluster: Cluster, ns: str, name: str, want: str) -> None:
    wait_for(lambda: cluster.status(ns, name).get("phase") == want, what=f"{name} {want}")


def life_of_jobs(cluster: Cluster, kubelet: Kubelet, ns: str) -> None:
    """Exercise every kind of call the operator makes."""
    # A gang that loses a worker, restarts, succeeds and is deleted after its TTL.
    cluster.create_job(
        ns, "gang", {"config": CONFIG, "nodes": 2, "runPolicy": {"ttlSecondsAfterFinished": 1}}
    )
    first = pods_of(cluster, ns, 1, 2)
    for pod in first:
        kubelet.run(pod)
    phase(cluster, ns, "gang", "Running")
    kubelet.finish(first[1], exit_code=137)
    second = pods_of(cluster, ns, 2, 2)
    for pod in second:
        kubelet.run(pod)
    phase(cluster, ns, "gang", "Running")
    for pod in second:
        kubelet.finish(pod, 0)
    wait_for(lambda: cluster.job(ns, "gang") is None, what="gang deleted after its TTL")

    # A config change while active: the effective-config ConfigMap is patched.
    cluster.create_job(ns, "edited", {"config": CONFIG})
    pods_of(cluster, ns, 1, 1)
    edited = {**CONFIG, "training": {"max_steps": 40}}
    cluster.patch_job(ns, "edited", {"spec": {"config": edited}})
    wait_for(
        lambda: any(
            "max_steps: 40" in str(cm.get("data")) for cm in cluster.children("configmaps", ns)
        ),
        what="ConfigMap patched with the new config",
    )
    # Suspension deletes the pods.
    cluster.patch_job(ns, "edited", {"spec": {"runPolicy": {"suspend": True}}})
    phase(cluster, ns, "edited", "Suspended")

    # An invalid spec: Failed with an event.
    cluster.create_job(ns, "broken", {"config": {**CONFIG, "lora": {"r": 0}}})
    phase(cluster, ns, "broken", "Failed")


@pytest.mark.parametrize(
    "sets",
    [[], ["rbac.scope=namespace", f"watchNamespaces={{{WATCHED}}}"]],
    ids=["cluster", "namespaced"],
)
def test_every_operator_request_is_authorized_by_the_chart(
    render: Render, emulated: tuple[Cluster, Kubelet], tmp_path: Path, sets: list[str]
) -> None:
    objects = render(sets=sets)
    (deployment,) = by_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    cluster, kubelet = emulated
    operator = ChartOperator(cluster, _dir(tmp_path / "operator"), pod["containers"][0]["args"])
    assert cluster.server is not None
    # The harness trims kmock's request log to keep matching fast; this audit needs every
    # request of one short run, so keep them all here.
    cluster.server.KEEP_REQUESTS = 1_000_000
    seen_before = len(cluster.server._requests)  # the operator's startup scans count too
    operator.start()
    try:
        life_of_jobs(cluster, kubelet, WATCHED)
        requests = list(cluster.server._requests[seen_before:])
    finally:
        operator.stop()
    # Only the operator's own calls: the harness and the kubelet use python-requests.
    calls = {
        attrs
        for request in requests
        if not request.headers.get("User-Agent", "").startswith("python-requests")
        and (attrs := attributes(request)) is not None
    }
    calls |= set(NamespaceListingApiServer.calls)
    assert any(a.verb == "create" and a.resource == "pods" for a in calls), calls
    denied = sorted(str(a) for a in calls if not authorized(objects, pod["serviceAccountName"], a))
    assert not denied, "the chart's RBAC would deny:\n" + "\n".join(denied)
    # And the chart grants nothing the operator never does.
    used = {(a.group, a.resource, a.verb) for a in calls}
    granted = {
        (group, resource, verb)
        for role in by_kind(objects, "ClusterRole") + by_kind(objects, "Role")
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    unused = granted - used - NOT_A_CALL
    assert not unused, f"granted but never used: {sorted(unused)}"


def _dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
