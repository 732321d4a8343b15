"""A hostPath volume provisioner: every claim gets a PersistentVolume of its own.

Plays what a CSI driver's external-provisioner does on a real cluster: for a claim with no
volume, it creates a PersistentVolume (hostPath under `root`, the claim's size, access modes
and class, claimRef set), and kube-controller-manager's binder binds the two. Pods then see
the volume's directory (node_agent rewrites their mount paths onto it).
"""

from __future__ import annotations

import logging
from pathlib import Path

from kubeharness.api import Api, ApiError

log = logging.getLogger("node_agent")


class Provisioner:
    def __init__(self, api: Api, root: Path) -> None:
        self.api = api
        self.root = root

    def sync(self) -> None:
        """Provision a volume for each claim that has none yet."""
        for claim in self.api.items("api/v1/persistentvolumeclaims"):
            if claim["spec"].get("volumeName") or claim["metadata"].get("deletionTimestamp"):
                continue
            self._provision(claim)

    def _provision(self, claim: dict) -> None:
        meta, spec = claim["metadata"], claim["spec"]
        name = f"pv-{meta['uid']}"
        directory = self.root / meta["namespace"] / f"{meta['name']}-{meta['uid'][:8]}"
        directory.mkdir(parents=True, exist_ok=True)
        volume = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name, "labels": {"finetune.dev/test-provisioner": "hostpath"}},
            "spec": {
                "capacity": {"storage": spec["resources"]["requests"]["storage"]},
                "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": spec.get("storageClassName") or "",
                "hostPath": {"path": str(directory), "type": "DirectoryOrCreate"},
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": meta["namespace"],
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        try:
            self.api.post("api/v1/persistentvolumes", volume)
        except ApiError as exc:
            if exc.status != 409:  # 409: made on an earlier pass, binding is under way
                log.warning("provisioning %s/%s failed: %s", meta["namespace"], meta["name"], exc)

    def directory_of(self, namespace: str, claim: str) -> Path | None:
        """The host directory of a bound claim, or None while it is not bound."""
        found = self.api.get(f"api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}")
        if found is None or (found.get("status") or {}).get("phase") != "Bound":
            return None
        volume = self.api.get(f"api/v1/persistentvolumes/{found['spec']['volumeName']}")
        if volume is None or "hostPath" not in volume["spec"]:
            return None
        return Path(volume["spec"]["hostPath"]["path"])
