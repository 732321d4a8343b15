"""Thin Kubernetes I/O for the reconciler, over the official client, as plain dicts.

Responses are read as raw JSON (no model deserialisation), so the operator sees
exactly what the API server sent. 409 on create and 404 on delete count as success:
children have deterministic names, so repeating an action is harmless.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from finetune_operator import constants as c
from finetune_operator.manifests import build_event

log = logging.getLogger("finetune_operator.kube")

Json = dict[str, Any]
# Children served by CRDs (the gang schedulers' PodGroups): kind -> plural.
CUSTOM_PLURALS = {"PodGroup": "podgroups"}


def load_configuration() -> kubernetes.client.Configuration:
    """In-cluster service account first, then the kubeconfig ($KUBECONFIG or ~/.kube)."""
    config = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=config)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=config)
    return config


class Kube:
    """The API verbs the operator uses (listed for RBAC in docs/operator.md)."""

    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.apps = kubernetes.client.AppsV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)

    @classmethod
    def from_environment(cls) -> Kube:
        return cls(kubernetes.client.ApiClient(load_configuration()))

    # ---------------------------------------------------------------------------- helpers
    @staticmethod
    def _json(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Json:
        response = call(*args, _preload_content=False, **kwargs)
        data = response.data
        return json.loads(data) if data else {}

    def _optional(self, call: Callable[..., Any], *args: Any) -> Json | None:
        try:
            return self._json(call, *args)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _verbs(self, kind: str) -> tuple[Any, ...]:
        """(read, create, patch, delete) for a child kind."""
        core = self.core
        table: dict[str, tuple[Any, ...]] = {
            "Pod": (
                core.read_namespaced_pod,
                core.create_namespaced_pod,
                core.patch_namespaced_pod,
                core.delete_namespaced_pod,
            ),
            "ConfigMap": (
                core.read_namespaced_config_map,
                core.create_namespaced_config_map,
                core.patch_namespaced_config_map,
                core.delete_namespaced_config_map,
            ),
            "Service": (
                core.read_namespaced_service,
                core.create_namespaced_service,
                core.patch_namespaced_service,
                core.delete_namespaced_service,
            ),
            "PersistentVolumeClaim": (
                core.read_namespaced_persistent_volume_claim,
                core.create_namespaced_persistent_volume_claim,
                core.patch_namespaced_persistent_volume_claim,
                core.delete_namespaced_persistent_volume_claim,
            ),
            "Deployment": (  # spec.serve's inference replicas
                self.apps.read_namespaced_deployment,
                self.apps.create_namespaced_deployment,
                self.apps.patch_namespaced_deployment,
                self.apps.delete_namespaced_deployment,
            ),
        }
        return table[kind]

    # ------------------------------------------------------------------------------- jobs
    def get_job(self, namespace: str, name: str) -> Json | None:
        return self._optional(
            self.custom.get_namespaced_custom_object,
            c.GROUP,
            c.VERSION,
            namespace,
            c.PLURAL,
            name,
        )

    def patch_job_status(
        self, namespace: str, name: str, status_patch: Json, resource_version: str | None = None
    ) -> None:
        """Merge-patch the status; with `resource_version`, only if the job is still that
        version (the apiserver answers 409 Conflict otherwise)."""
        body: Json = {"status": status_patch}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        self.custom.patch_namespaced_custom_object_status(
            c.GROUP, c.VERSION, namespace, c.PLURAL, name, body
        )

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(
                c.GROUP, c.VERSION, namespace, c.PLURAL, name, propagation_policy="Background"
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    # ---------------------------------------------------------------------------- children
    def list_pods(self, namespace: str, job: str, uid: str) -> list[Json]:
        """Pods of one job: by label on the server, and by owner uid here (authoritative)."""
        data = self._json(
            self.core.list_namespaced_pod, namespace, label_selector=f"{c.LABEL_JOB}={job}"
        )
        return [pod for pod in data.get("items") or [] if _owned_by(pod, uid)]

    def get_child(self, kind: str, namespace: str, name: str) -> Json | None:
        return self._optional(self._verbs(kind)[0], name, namespace)

    def get_custom(self, api_version: str, plural: str, namespace: str, name: str) -> Json | None:
        """A namespaced custom object (e.g. a PodGroup); None if absent or its CRD is."""
        group, version = api_version.split("/", 1)
        return self._optional(
            self.custom.get_namespaced_custom_object, group, version, namespace, plural, name
        )

    def delete_custom(self, api_version: str, plural: str, namespace: str, name: str) -> None:
        """Delete a namespaced custom object (a Kueue Workload); absent is fine."""
        group, version = api_version.split("/", 1)
        try:
            self._json(
                self.custom.delete_namespaced_custom_object, group, version, namespace, plural, name
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def create(self, manifest: Json) -> bool:
        """Create a child; False when it already existed (409)."""
        kind, meta = manifest["kind"], manifest["metadata"]
        try:
            if kind in CUSTOM_PLURALS:
                group, version = manifest["apiVersion"].split("/", 1)
                self._json(
                    self.custom.create_namespaced_custom_object,
                    group,
                    version,
                    meta["namespace"],
                    CUSTOM_PLURALS[kind],
                    manifest,
                )
            else:
                self._json(self._verbs(kind)[1], meta["namespace"], manifest)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def pod_log(self, namespace: str, name: str, container: str, lines: int, limit: int) -> str:
        """The last `lines` lines of a container's log, at most `limit` bytes ('' if none)."""
        try:
            response: Any = self.core.read_namespaced_pod_log(
                name,
                namespace,
                container=container,
                tail_lines=lines,
                limit_bytes=limit,
                _preload_content=False,
            )
        except ApiException as exc:
            if exc.status in (400, 404):  # never started, or already gone
                return ""
            raise
        return bytes(response.data or b"").decode("utf-8", errors="replace")

    def update(self, manifest: Json) -> None:
        """Merge the manifest's data/spec into an existing child (ConfigMap refresh)."""
        kind, meta = manifest["kind"], manifest["metadata"]
        patch = {key: value for key, value in manifest.items() if key in ("data", "spec")}
        self._json(self._verbs(kind)[2], meta["name"], meta["namespace"], patch)

    def delete(self, kind: str, namespace: str, name: str, force: bool = False) -> None:
        """Delete a child; `force` skips what is left of its grace period (gracePeriodSeconds=0)."""
        extra: dict[str, Any] = {"grace_period_seconds": 0} if force else {}
        try:
            self._json(
                self._verbs(kind)[3], name, namespace, propagation_policy="Background", **extra
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    # ------------------------------------------------------------------------------ events
    def post_event(self, job: Json, type_: str, reason: str, message: str, now: datetime) -> None:
        body = build_event(job, type_, reason, message, now, suffix=secrets.token_hex(8))
        self._json(self.core.create_namespaced_event, body["metadata"]["namespace"], body)


def _owned_by(obj: Json, uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)
