"""kwok: fake nodes at scale. Its nodes register as Ready and it plays their pods' lifecycle
(Pending → Running, deletion), so controllers can be measured with thousands of pods and no
process per pod. Built by `make kube` from sigs.k8s.io/kwok (pinned in kube/kwok/go.mod).

Pod IPs are drawn from a loopback range: a controller that dials a pod IP (ours polls rank
0's progress) reaches nothing on this host rather than a private network address.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from kubeharness import processes
from kubeharness.api import ApiError
from kubeharness.cluster import Cluster, wait_for
from kubeharness.control_plane import ROOT, ControlPlane, free_port

ANNOTATION = "kwok.x-k8s.io/node"
STAGES = ("node/fast", "node/heartbeat", "pod/fast")


def stage_dir() -> Path:
    """kustomize/stage of the kwok module pinned in kube/kwok/go.mod (in Go's module cache)."""
    module = ROOT / "kube" / "kwok" / "go.mod"
    found = re.search(r"^require sigs.k8s.io/kwok (v[0-9.]+)$", module.read_text(), re.M)
    if found is None:
        raise RuntimeError(f"{module}: no `require sigs.k8s.io/kwok vX.Y.Z` line")
    cache = subprocess.run(
        ["go", "env", "GOMODCACHE"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return Path(cache) / f"sigs.k8s.io/kwok@{found.group(1)}" / "kustomize" / "stage"


POD_CIDR = "127.2.0.0/16"


class Kwok:
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.log_path = plane.workdir / "kwok.log"
        self.proc = None

    def start(self) -> Kwok:
        binary = self.plane.bin / "kwok"
        if not binary.exists():
            raise RuntimeError(f"{binary} is missing: run `make kube`")
        self.proc = processes.spawn(
            [
                str(binary),
                f"--kubeconfig={self.plane.admin_kubeconfig}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={ANNOTATION}=fake",
                f"--cidr={POD_CIDR}",
                "--node-ip=127.0.0.1",
                f"--server-address=127.0.0.1:{free_port()}",
                f"--config={self._config()}",
            ],
            self.log_path,
        )
        return self

    def _config(self) -> Path:
        """kwok's own published stages (fast node start with heartbeats, fast pod lifecycle),
        read from the pinned module in Go's module cache."""
        docs: list[str] = []  # kwok's defaults for everything else
        for part in STAGES:
            docs += [f.read_text() for f in sorted((stage_dir() / part).glob("*.yaml"))]
        path = self.plane.workdir / "kwok.yaml"
        path.write_text("\n---\n".join(docs))
        return path

    def stop(self) -> None:
        processes.stop(self.proc)

    def add_nodes(self, cluster: Cluster, count: int, gpus: int = 8) -> list[str]:
        """Register `count` fake nodes; returns their names once they are Ready and untainted."""
        capacity = {"cpu": "256", "memory": "2Ti", "pods": "500", "nvidia.com/gpu": str(gpus)}
        names = [f"kwok-node-{i}" for i in range(count)]
        for name in names:
            node = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {ANNOTATION: "fake"},
                    "labels": {"kubernetes.io/hostname": name, "type": "kwok"},
                },
                "status": {"capacity": capacity, "allocatable": capacity},
            }
            try:
                cluster.post("api/v1/nodes", node)
            except ApiError as exc:
                if exc.status != 409:
                    raise

        def ready() -> bool:
            nodes = cluster.items("api/v1/nodes", labelSelector="type=kwok")
            return len(nodes) == count and all(
                any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in (n.get("status") or {}).get("conditions") or []
                )
                for n in nodes
            )

        wait_for(ready, 120, interval=0.5, what=f"{count} kwok nodes Ready")
        # TaintNodesByCondition gave each a not-ready taint at creation; the node-lifecycle
        # controller (off here) would lift it now that kwok reports them Ready.
        for name in names:
            cluster.patch(f"api/v1/nodes/{name}", {"spec": {"taints": None}})
        return names
