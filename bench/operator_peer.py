"""Bench 4 and 5: our operator and a peer on one real control plane, side by side.

Per scale, a fresh control plane (tests/kubeharness: etcd, kube-apiserver with an audit log,
controller-manager, scheduler) with kwok's fake nodes, and both controllers running at once:

- ours: the `finetune-operator` process as the chart's ServiceAccount (the chart's RBAC),
  resyncing every `resync` seconds;
- the peer: Kubeflow training-operator v1.8.1 (PyTorchJob only), built by `make kube-peers`
  from its Go module, as its own ServiceAccount with the ClusterRole its manifests publish.
  Its validating webhook is not registered (the apiserver could not reach a Service here), so
  its admission checks are skipped; its controller is unchanged.

N jobs of two workers each are created in one burst, interleaved (ours, peer, ours, …): a
FineTuneJob with `nodes: 2`, a PyTorchJob with one Master and one Worker. A pod watch
stamps, on one monotonic clock, when each pod appeared and when it was Running (kwok runs
them). Reported per controller: time from job creation to all its pods created and to all
Running (p50/p99), requests to the apiserver per job (its audit log, per user), CPU seconds,
and RSS idle and with N jobs Running (KiB per job).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import requests

from bench.common import ROOT, percentile

sys.path.insert(0, str(ROOT / "tests"))

from helm_binary import find_tools  # noqa: E402
from kubeharness import processes  # noqa: E402
from kubeharness.cluster import Cluster, wait_for  # noqa: E402
from kubeharness.control_plane import ControlPlane, free_port, kube_version  # noqa: E402
from kubeharness.kwok import Kwok  # noqa: E402
from kubeharness.operator_process import (  # noqa: E402
    OperatorProcess,
    apply_crd,
    install_chart_rbac,
    kubectl,
    service_account_token,
)
from kubeharness.provisioner import Provisioner  # noqa: E402

PEER_VERSION = "v1.8.1"
PEER_NAME = f"kubeflow training-operator {PEER_VERSION} (PyTorchJob)"
PEER_BINARY = ROOT / ".cache" / "kube" / "peers" / "training-operator"
# Where the peer's cert-controller expects its Secret mounted (fixed in its source).
WEBHOOK_CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")
OURS_LABEL, PEER_LABEL = "finetune.dev/job", "training.kubeflow.org/job-name"
CONFIG = {
    "base_model": "builtin:tiny-llama",
    "datasets": [{"path": "train.jsonl"}],
    "training": {"max_steps": 20},
}


def peer_module_dir() -> Path:
    out = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", "github.com/kubeflow/training-operator"],
        cwd=ROOT / "kube" / "peers" / "training-operator",
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


class PodClock:
    """A pod watch stamping first sight and Running per (namespace, job label value)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.created: dict[tuple[str, str], dict[str, float]] = {}
        self.running: dict[tuple[str, str], dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> PodClock:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        version = ""
        while not self._stop.is_set():
            params = {"watch": "1", "allowWatchBookmarks": "true", "timeoutSeconds": "60"}
            if version:
                params["resourceVersion"] = version
            try:
                with self.cluster.api.http.get(
                    f"{self.cluster.url}/api/v1/pods", params=params, stream=True, timeout=(5, 90)
                ) as response:
                    for line in response.iter_lines():
                        if self._stop.is_set():
                            return
                        if line:
                            version = self._on_event(json.loads(line)) or version
            except requests.RequestException:
                continue

    def _on_event(self, event: dict[str, Any]) -> str | None:
        now = time.monotonic()
        pod = event.get("object") or {}
        meta = pod.get("metadata") or {}
        if event.get("type") == "ERROR":
            return ""  # expired: watch again from now
        labels = meta.get("labels") or {}
        job = labels.get(OURS_LABEL) or labels.get(PEER_LABEL)
        if job and event.get("type") in ("ADDED", "MODIFIED"):
            key = (meta["namespace"], job)
            self.created.setdefault(key, {}).setdefault(meta["name"], now)
            if (pod.get("status") or {}).get("phase") == "Running":
                self.running.setdefault(key, {}).setdefault(meta["name"], now)
        return meta.get("resourceVersion")


def pytorchjob(name: str) -> dict[str, Any]:
    def replica() -> dict[str, Any]:
        container = {"name": "pytorch", "image": "finetune-runtime:bench", "command": ["train"]}
        return {
            "replicas": 1,
            "restartPolicy": "OnFailure",
            "template": {"spec": {"containers": [container]}},
        }

    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name},
        "spec": {"pytorchReplicaSpecs": {"Master": replica(), "Worker": replica()}},
    }


class Peer:
    """training-operator as its own ServiceAccount, PyTorchJob only, webhook unregistered."""

    namespace = "kubeflow"
    account = "training-operator"

    def __init__(self, plane: ControlPlane, cluster: Cluster, workdir: Path) -> None:
        self.plane, self.cluster, self.workdir = plane, cluster, workdir
        self.proc: Any = None
        self.webhook_port = free_port()

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.account}"

    def install(self, kubectl_bin: Path) -> None:
        module = peer_module_dir()
        crd = module / "manifests" / "base" / "crds" / "kubeflow.org_pytorchjobs.yaml"
        kubectl(kubectl_bin, self.cluster.kubeconfig, "apply", "--server-side", "-f", str(crd))
        self.cluster.create_namespace(self.namespace)
        role = module / "manifests" / "base" / "rbac" / "role.yaml"
        kubectl(kubectl_bin, self.cluster.kubeconfig, "apply", "--server-side", "-f", str(role))
        self.cluster.post(
            f"api/v1/namespaces/{self.namespace}/serviceaccounts",
            {"metadata": {"name": self.account}},
        )
        self.cluster.post(
            "apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            {
                "metadata": {"name": "training-operator"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "training-operator",
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": self.account, "namespace": self.namespace}
                ],
            },
        )
        # cert-controller fills this Secret with the webhook's serving certificate and injects
        # its CA into this configuration, and the operator waits for both before it starts its
        # controllers. The configuration matches no request: the apiserver could not verify
        # the webhook here (its certificate names a Service), so it is never called.
        self.cluster.post(
            f"api/v1/namespaces/{self.namespace}/secrets",
            {"metadata": {"name": "training-operator-webhook-cert"}},
        )
        self.cluster.post(
            "apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
            {
                "metadata": {"name": "validator.training-operator.kubeflow.org"},
                "webhooks": [
                    {
                        "name": "validator.pytorchjob.training-operator.kubeflow.org",
                        "clientConfig": {
                            "url": f"https://127.0.0.1:{self.webhook_port}/"
                            "validate-kubeflow-org-v1-pytorchjob"
                        },
                        "rules": [],
                        "sideEffects": "None",
                        "admissionReviewVersions": ["v1"],
                        "failurePolicy": "Ignore",
                    }
                ],
            },
        )

    def start(self) -> None:
        from kubeharness.operator_process import Identity

        token = service_account_token(self.cluster, Identity(self.namespace, self.account))
        kubeconfig = self.plane.token_kubeconfig(self.workdir / "peer.kubeconfig", token)
        self.health = free_port()
        self.proc = processes.spawn(
            [
                str(PEER_BINARY),
                f"--kubeconfig={kubeconfig}",
                "--enable-scheme=pytorchjob",
                "--namespace=",  # every namespace (the default is $KUBEFLOW_NAMESPACE)
                f"--metrics-bind-address=127.0.0.1:{free_port()}",
                f"--health-probe-bind-address=127.0.0.1:{self.health}",
                f"--webhook-server-port={self.webhook_port}",
            ],
            self.workdir / "peer.log",
            {"KUBEFLOW_NAMESPACE": self.namespace, "PATH": "/usr/bin:/bin"},
        )
        self._mount_webhook_secret()
        try:
            wait_for(self._healthy, 120, interval=0.5, what="training-operator /readyz")
        except AssertionError as exc:
            log = processes.tail(self.workdir / "peer.log", 10**7)
            errors = [line for line in log.splitlines() if "healthz" not in line][-40:]
            raise RuntimeError(f"{exc}\n" + "\n".join(errors)) from None

    def _mount_webhook_secret(self) -> None:
        """What the kubelet's Secret volume does in the peer's pod: its cert-controller writes
        the serving certificate into the Secret, and waits to find it as files."""
        secret = f"api/v1/namespaces/{self.namespace}/secrets/training-operator-webhook-cert"

        def filled() -> dict[str, str] | None:
            data = (self.cluster.get(secret) or {}).get("data") or {}
            return data if {"tls.crt", "tls.key"} <= set(data) else None

        data = wait_for(filled, 120, interval=0.5, what="the peer's webhook certificate")
        WEBHOOK_CERT_DIR.mkdir(parents=True, exist_ok=True)
        for key, value in data.items():
            (WEBHOOK_CERT_DIR / key).write_bytes(base64.b64decode(value))

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(processes.tail(self.workdir / "peer.log"))
        try:
            url = f"http://127.0.0.1:{self.health}/readyz"
            return requests.get(url, timeout=2, proxies={"http": "", "https": ""}).ok
        except requests.RequestException:
            return False

    def stop(self) -> None:
        processes.stop(self.proc)


def _rss_kib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 1024


def _cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _latencies(created: dict, clock: dict, pods: int) -> list[float]:
    out = []
    for key, t0 in created.items():
        seen = clock.get(key, {})
        if len(seen) >= pods:
            out.append(max(sorted(seen.values())[:pods]) - t0)
    return out


def _stats(values: list[float], jobs: int) -> dict[str, Any]:
    return {
        "jobs_done": len(values),
        "p50_s": percentile(values, 50) if values else None,
        "p99_s": percentile(values, 99) if values else None,
        "max_s": max(values) if values else None,
        "complete": len(values) == jobs,
    }


def run_scale(
    jobs: int, *, resync: float = 5.0, timeout: float = 900.0, nodes: int = 0, peer: bool = True
) -> dict:
    """One burst of `jobs` jobs per controller on a fresh control plane; see the module doc.
    With `peer=False`, ours alone (the peer's binary is only built by `make kube-peers`)."""
    if peer and not PEER_BINARY.exists():
        raise RuntimeError(f"{PEER_BINARY} is missing: run `make kube-peers`")
    sides = ("ours", "peer") if peer else ("ours",)
    tools = find_tools()
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp:
        work = Path(tmp)
        plane = ControlPlane(work / "plane").start()
        kwok = Kwok(plane).start()
        ours: OperatorProcess | None = None
        peer_process = Peer(plane, Cluster(plane), work)
        stop_provisioning = threading.Event()
        try:
            cluster = Cluster(plane)
            kwok.add_nodes(cluster, nodes or max(4, jobs // 50), gpus=1000)
            provisioner = Provisioner(cluster.api, work / "volumes")

            def provision() -> None:
                while not stop_provisioning.wait(0.5):
                    try:
                        provisioner.sync()
                    except (OSError, RuntimeError):
                        continue

            threading.Thread(target=provision, daemon=True).start()
            apply_crd(cluster, tools.kubectl)
            identity, _ = install_chart_rbac(cluster, tools.helm, tools.kubectl, "finetune-system")
            token = service_account_token(cluster, identity)
            ours = OperatorProcess(
                plane.token_kubeconfig(work / "ours.kubeconfig", token),
                work,
                progress_port=free_port(),
                resync_seconds=resync,
            ).start()
            pids = {"ours": ours.proc.pid}
            users = {"ours": identity.username}
            if peer:
                peer_process.install(tools.kubectl)
                peer_process.start()
                pids["peer"], users["peer"] = peer_process.proc.pid, peer_process.username
            for ns in sides:
                cluster.create_namespace(ns)
            time.sleep(3)
            idle = {side: _rss_kib(pid) for side, pid in pids.items()}
            cpu0 = {side: _cpu_s(pid) for side, pid in pids.items()}
            audit_from = len(plane.audit_events())
            clock = PodClock(cluster).start()
            created: dict[str, dict[tuple[str, str], float]] = {side: {} for side in sides}
            burst0 = time.monotonic()
            for i in range(jobs):
                name = f"job-{i}"
                created["ours"][("ours", name)] = time.monotonic()
                cluster.create_job("ours", name, {"config": CONFIG, "nodes": 2})
                if peer:
                    created["peer"][("peer", name)] = time.monotonic()
                    path = "apis/kubeflow.org/v1/namespaces/peer/pytorchjobs"
                    cluster.post(path, pytorchjob(name))
            burst_s = time.monotonic() - burst0

            def all_running() -> bool:
                return all(
                    len(clock.running.get(key, {})) >= 2
                    for side in created.values()
                    for key in side
                )

            with contextlib.suppress(AssertionError):  # reported as incomplete below
                wait_for(all_running, timeout, interval=1.0, what="every job's pods Running")
            time.sleep(2 * resync)  # settle: a steady state, not the burst's garbage
            rss = {side: _rss_kib(pid) for side, pid in pids.items()}
            cpu = {side: _cpu_s(pid) - cpu0[side] for side, pid in pids.items()}
            clock.stop()
            events = plane.audit_events()[audit_from:]
            result: dict[str, Any] = {"jobs": jobs, "burst_create_s": burst_s}
            for side in sides:
                mine = [e for e in events if (e.get("user") or {}).get("username") == users[side]]
                result[side] = {
                    "pods_created": _stats(_latencies(created[side], clock.created, 2), jobs),
                    "running": _stats(_latencies(created[side], clock.running, 2), jobs),
                    "requests": len(mine),
                    "requests_per_job": len(mine) / jobs,
                    "cpu_s": cpu[side],
                    "rss_idle_kib": idle[side],
                    "rss_kib": rss[side],
                    "kib_per_job": (rss[side] - idle[side]) / jobs,
                }
            return result
        finally:
            stop_provisioning.set()
            if ours is not None:
                ours.stop()
            peer_process.stop()
            if peer and os.environ.get("BENCH_KEEP_PEER_LOG"):
                import shutil

                shutil.copy(work / "peer.log", os.environ["BENCH_KEEP_PEER_LOG"])
            kwok.stop()
            plane.stop()


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jobs", type=int, nargs="?", default=10)
    parser.add_argument("--resync", type=float, default=5.0)
    args = parser.parse_args()
    result = run_scale(args.jobs, resync=args.resync)
    result["control_plane"] = f"kube-apiserver {kube_version()}"
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
