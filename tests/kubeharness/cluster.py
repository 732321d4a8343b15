"""What a test does with the cluster: FineTuneJobs, their children, namespaces, the audit log.

A thin facade over the admin identity's `Api`; every call is a real request to the test
apiserver (so RBAC, admission, validation and pruning all apply to what tests send).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubeharness.api import Api, ApiError
from kubeharness.control_plane import ControlPlane

JOBS = "apis/finetune.dev/v1alpha1"


def wait_for(
    check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (ApiError, OSError, KeyError, IndexError, TypeError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}: last={last!r}")


class Cluster:
    """The admin's view of the test control plane."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.url = plane.url
        self.kubeconfig: Path = plane.admin_kubeconfig
        self.api = Api(plane.url, plane.session)

    # ---------------------------------------------------------------------------- HTTP
    def get(self, path: str, **params: Any) -> dict[str, Any] | None:
        return self.api.get(path, **params)

    def items(self, path: str, **params: Any) -> list[dict[str, Any]]:
        """A list's items, each with its `kind` and `apiVersion` (a list omits them per item,
        as kubectl fills them in)."""
        listing = self.api.get(path, **params) or {}
        kind = str(listing.get("kind", "")).removesuffix("List")
        return [
            {"apiVersion": listing.get("apiVersion"), "kind": kind, **item}
            for item in listing.get("items") or []
        ]

    def post(self, path: str, body: dict[str, Any], **params: Any) -> dict[str, Any]:
        return self.api.post(path, body, **params)

    def patch(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        return self.api.patch(path, body)

    def delete(self, path: str, body: dict[str, Any] | None = None) -> bool:
        return self.api.delete(path, body)

    # ---------------------------------------------------------------------- namespaces
    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        if labels:
            body["metadata"]["labels"] = labels
        self.post("api/v1/namespaces", body)
        # The ServiceAccount admission plugin refuses pods until `default` exists.
        wait_for(
            lambda: self.get(f"api/v1/namespaces/{name}/serviceaccounts/default"),
            what=f"the default ServiceAccount of {name}",
        )

    # ------------------------------------------------------------------------ resources
    def create_job(
        self, namespace: str, name: str, spec: dict[str, Any], **params: Any
    ) -> dict[str, Any]:
        body = {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": name},
            "spec": spec,
        }
        return self.post(f"{JOBS}/namespaces/{namespace}/finetunejobs", body, **params)

    def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(f"{JOBS}/namespaces/{namespace}/finetunejobs/{name}")

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return (self.job(namespace, name) or {}).get("status") or {}

    def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        found = self.patch(f"{JOBS}/namespaces/{namespace}/finetunejobs/{name}", patch)
        if found is None:
            raise AssertionError(f"FineTuneJob {namespace}/{name} does not exist")
        return found

    def delete_job(self, namespace: str, name: str) -> None:
        self.delete(f"{JOBS}/namespaces/{namespace}/finetunejobs/{name}")

    def children(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        return self.items(f"api/v1/namespaces/{namespace}/{kind}")

    def pods(
        self, namespace: str, attempt: int | None = None, *, live: bool = False
    ) -> list[dict[str, Any]]:
        """A namespace's pods by name; one attempt's only, or (live) none being deleted."""
        pods = self.children("pods", namespace)
        if attempt is not None:
            pods = [
                p
                for p in pods
                if (p["metadata"].get("labels") or {}).get("finetune.dev/attempt") == str(attempt)
            ]
        if live:
            pods = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        return sorted(pods, key=lambda p: p["metadata"]["name"])

    def events(self, namespace: str, kind: str = "FineTuneJob") -> list[dict[str, Any]]:
        """Events about objects of `kind` (the scheduler's own events about pods aside)."""
        return [
            event
            for event in self.children("events", namespace)
            if (event.get("involvedObject") or {}).get("kind") == kind
        ]

    def delete_jobs(self, namespace: str, timeout: float = 60.0) -> None:
        """Delete every job in a namespace and wait for the operator to release it."""
        path = f"{JOBS}/namespaces/{namespace}/finetunejobs"
        for job in self.items(path):
            self.delete(f"{path}/{job['metadata']['name']}")
        wait_for(lambda: self.items(path) == [], timeout, what=f"jobs in {namespace} released")

    # ------------------------------------------------------------------------ audit log
    def audit(self, settle: float = 1.5) -> list[dict[str, Any]]:
        """Every finished request, from the apiserver's audit log (batched each second)."""
        time.sleep(settle)
        return self.plane.audit_events()

    def creations(self, kind: str, namespace: str) -> dict[str, int]:
        """How many times each object of `kind` was created in `namespace` (re-creation counts)."""
        counts: dict[str, int] = {}
        for event in self.audit():
            ref = event.get("objectRef") or {}
            if (
                event.get("verb") == "create"
                and ref.get("resource") == kind
                and not ref.get("subresource")
                and ref.get("namespace") == namespace
                and (event.get("responseStatus") or {}).get("code") == 201
            ):
                counts[ref["name"]] = counts.get(ref["name"], 0) + 1
        return counts

    def requests_by(self, user: str) -> list[dict[str, Any]]:
        """The audit events of one user's requests (e.g. the operator's ServiceAccount)."""
        return [e for e in self.audit() if (e.get("user") or {}).get("username") == user]
