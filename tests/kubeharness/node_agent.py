"""A node agent that registers a Node and runs the pods the scheduler binds to it as local
processes, so the operator, the launcher, torchrun and the trainers all run for real.

It does what a kubelet does, through the real apiserver and as the node's own identity
(`system:node:<name>`, so the Node authorizer decides which Secrets it may read): registers
its Node (capacity including `nvidia.com/gpu`, Ready), runs the pods bound to it (see
`pod_run`), writes their status, and deletes them gracefully: on a deletion timestamp it
sends SIGTERM, waits the pod's grace period (capped by `grace_cap` to keep tests short),
kills what is left, writes the final status and removes the object with grace 0 (a pod
named in `unresponsive` is left alone, as by a hung kubelet, until someone force-deletes it;
a force-deleted pod's processes are killed before any newly bound pod starts). It also
plays two cluster services a real cluster has: cluster DNS (names of a headless Service
resolve as CoreDNS answers them, by the EndpointSlice controller's rules; see `resolve`) and
a hostPath volume provisioner (each claim gets a PersistentVolume of its own, which kube-
controller-manager's binder binds). Given a serving certificate it answers the apiserver's
pods/log requests from its containers' output, as a kubelet's log endpoint (`kubelet_logs`).

What cannot exist here is played, and nothing else:
- Images and isolation: every container runs from this virtualenv (its bin/ first on
  PATH); `image` is ignored. Processes of one container carry KUBELET_CONTAINER=<pod
  uid>/<container> in their environment, which is how the agent finds them all.
- Volumes: each is a host directory, and mount paths are rewritten (see `rewrite`).
- Network namespaces: each pod gets its own loopback IP (127.1.x.y); a name that cluster
  DNS would answer is replaced by the IP when the container starts, and a pod's
  PET_MASTER_PORT by a port free on this host (a fixed 29500 would collide here).
- Resources: OMP_NUM_THREADS=1 per container; GPUs do not exist.
- Probes: only readiness `httpGet` probes run, every half second (see `probes`); a pod with
  one is Ready while its probe passes. An argument `0.0.0.0` (listen on every interface of
  the pod) becomes the pod's IP.
- Services: there is no kube-proxy; `service_addresses` lists the endpoints a request to a
  Service would be routed to.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from kubeharness.api import STRATEGIC, Api, ApiError
from kubeharness.kubelet_logs import KubeletLogServer
from kubeharness.pki import KeyPair
from kubeharness.pod_run import MARKER, PodNotReady, PodRun, now_rfc3339
from kubeharness.provisioner import Provisioner

log = logging.getLogger("node_agent")


def _conditions(ready: str, stamp: str) -> list[dict[str, str]]:
    return [
        {"type": kind, "status": status, "lastTransitionTime": stamp}
        for kind, status in (("Initialized", "True"), ("ContainersReady", ready), ("Ready", ready))
    ]


def _is_ready(pod: dict[str, Any]) -> bool:
    """The pod's Ready condition; a terminating pod is never ready (EndpointSlice rules)."""
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _container(name: str, state: dict[str, Any], *, ready: bool) -> dict[str, Any]:
    return {
        "name": name,
        "ready": ready,
        "started": ready,
        "restartCount": 0,
        "image": "finetune-runtime:test",
        "imageID": "",
        "state": state,
    }


class NodeAgent:
    """One Node, run by this process (see the module docstring)."""

    def __init__(
        self,
        api: Api,
        admin: Api,
        root: Path,
        *,
        node_name: str = "process-node",
        extra_env: dict[str, str] | None = None,
        grace_cap: float = 30.0,
        gpus: int = 8,
        serving: KeyPair | None = None,
    ) -> None:
        self.api = api  # as system:node:<name>
        self.admin = admin  # cluster DNS and the provisioner, which are not the kubelet
        self.root = root
        self.node_name = node_name
        self.grace_cap = grace_cap
        self.gpus = gpus
        self.pods: dict[str, PodRun] = {}  # live pods by uid
        self.runs: list[PodRun] = []  # every pod ever run here, for logs and exit codes
        self.process_namespaces: set[str] = set()  # their pods run as processes
        self.auto_run = False  # other pods: Running at once (else when a test says so)
        # Pods (by name) whose deletion this node never acts on, as a hung or lost kubelet:
        # no SIGTERM, no final status, the object stays until someone force-deletes it.
        self.unresponsive: set[str] = set()
        self._scripted: set[str] = set()
        self._deleting: set[str] = set()
        self.provisioner = Provisioner(admin, root / "volumes")
        self._ips: dict[str, str] = {}
        self._ports: dict[tuple[str, str], int] = {}
        self._next_ip = itertools.count(1)
        self._lock = threading.RLock()
        self.base_env = {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}/usr/bin{os.pathsep}/bin",
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "NO_PROXY": "*",
            "no_proxy": "*",
            **(extra_env or {}),
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The kubelet's log endpoint (pods/log through the apiserver), when given a cert.
        self.logs_server = KubeletLogServer(serving, self.log_path) if serving else None

    # -- the agent loop -------------------------------------------------------------
    def start(self) -> NodeAgent:
        if self.logs_server is not None:
            self.logs_server.start()
        self.register()
        self._thread = threading.Thread(target=self._loop, name="node-agent", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for run in list(self.pods.values()):
            run.terminate(grace=0)
        if self.logs_server is not None:
            self.logs_server.stop()

    def register(self) -> None:
        """Create (or refresh) this Node with its capacity and a Ready condition."""
        capacity = {"cpu": "64", "memory": "512Gi", "pods": "250", "nvidia.com/gpu": str(self.gpus)}
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
        }
        with contextlib.suppress(ApiError):
            self.api.post("api/v1/nodes", node)
        stamp = now_rfc3339()
        status = {
            "capacity": capacity,
            "allocatable": capacity,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            # Where the apiserver dials this node for pods/log (0: none served).
            "daemonEndpoints": {
                "kubeletEndpoint": {"Port": self.logs_server.port if self.logs_server else 0}
            },
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "node agent is running pods as local processes",
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                }
            ],
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "v0.0.0-process",
                "kubeProxyVersion": "",
                "osImage": "",
                "kernelVersion": "",
                "containerRuntimeVersion": "process://",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }
        self.api.patch(f"api/v1/nodes/{self.node_name}/status", {"status": status})
        # TaintNodesByCondition admission gives a new Node the not-ready taint; the
        # node-lifecycle controller (off here, see control_plane) would lift it once Ready.
        self.api.patch(f"api/v1/nodes/{self.node_name}", {"spec": {"taints": None}})

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.provisioner.sync()
                self.sync()
            except (ApiError, OSError) as exc:
                log.warning("node agent pass failed: %s", exc)

    def sync(self) -> None:
        """One pass: start pods bound here, stop the ones being deleted."""
        bound = self.api.items("api/v1/pods", fieldSelector=f"spec.nodeName={self.node_name}")
        present = {pod["metadata"]["uid"]: pod for pod in bound}
        with self._lock:
            vanished = [run for uid, run in self.pods.items() if uid not in present]
            for run in vanished:
                self.pods.pop(run.uid, None)
        for run in vanished:  # force-deleted: killed at once, before any new pod starts here
            run.terminate(0.0)
        for uid, pod in present.items():
            meta = pod["metadata"]
            if meta.get("deletionTimestamp"):
                if meta["name"] not in self.unresponsive:
                    self._begin_delete(uid, pod)
                continue
            pending = (pod.get("status") or {}).get("phase", "Pending") == "Pending"
            if not pending or uid in self.pods or uid in self._scripted:
                continue
            if meta["namespace"] in self.process_namespaces:
                root = self.root / "pods" / meta["namespace"] / meta["name"] / uid[:8]
                with self._lock:
                    self.pods[uid] = PodRun(self, pod, self.ip_of(pod), root).start()
                    self.runs.append(self.pods[uid])
            elif self.auto_run:
                self.run(pod)

    # -- scripted pods: a test decides when they run and how they end ------------------
    def run(self, pod: dict[str, Any]) -> str:
        """A scripted pod starts: Running with its IP and a ready container; returns the IP.

        Waits until the scheduler has bound it here: a node may only write its own pods."""
        pod = self._bound(pod)
        ip = self.ip_of(pod)
        self._scripted.add(pod["metadata"]["uid"])
        stamp = now_rfc3339()
        main = pod["spec"]["containers"][0]["name"]
        self._patch_status(
            pod,
            {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "hostIP": "127.0.0.1",
                "startTime": stamp,
                "conditions": _conditions("True", stamp),
                "containerStatuses": [
                    _container(main, {"running": {"startedAt": stamp}}, ready=True)
                ],
            },
        )
        return ip

    def finish(self, pod: dict[str, Any], exit_code: int = 0, reason: str | None = None) -> None:
        """A scripted pod's container exits: Succeeded on 0, Failed otherwise."""
        self._scripted.add(pod["metadata"]["uid"])
        stamp = now_rfc3339()
        terminated = {
            "exitCode": exit_code,
            "reason": reason or ("Completed" if exit_code == 0 else "Error"),
            "startedAt": stamp,
            "finishedAt": stamp,
        }
        main = pod["spec"]["containers"][0]["name"]
        self._patch_status(
            pod,
            {
                "phase": "Succeeded" if exit_code == 0 else "Failed",
                "conditions": _conditions("False", stamp),
                "containerStatuses": [_container(main, {"terminated": terminated}, ready=False)],
            },
        )

    def _bound(self, pod: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        meta = pod["metadata"]
        path = f"api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.admin.get(path)
            if found is not None and found["spec"].get("nodeName") == self.node_name:
                return found
            time.sleep(0.1)
        raise AssertionError(f"pod {meta['name']} was not scheduled onto {self.node_name}")

    def _patch_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        self.api.patch(
            f"api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
            {"status": status},
            STRATEGIC,
        )

    def _begin_delete(self, uid: str, pod: dict[str, Any]) -> None:
        with self._lock:
            if uid in self._deleting:
                return
            self._deleting.add(uid)
        grace = pod["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        threading.Thread(
            target=self._delete, args=(uid, pod, min(float(grace), self.grace_cap)), daemon=True
        ).start()

    def _delete(self, uid: str, pod: dict[str, Any], grace: float) -> None:
        """Graceful deletion: stop the containers, report them, then remove the object."""
        run = self.pods.get(uid)
        if run is not None:
            run.terminate(grace)
            code = run.current.exit_code if run.current is not None else None
            if code is not None and run.phase not in ("Succeeded", "Failed"):
                run.report("Failed" if code else "Succeeded")
        elif (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            self._report_killed(pod)
        meta = pod["metadata"]
        try:
            self.api.delete(
                f"api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}},
            )
        except (ApiError, OSError) as exc:
            gone = isinstance(exc, ApiError) and exc.status == 409  # a newer pod of that name
            if not gone:
                if not self._stop.is_set():
                    log.warning("final delete of %s failed: %s", meta["name"], exc)
                with self._lock:
                    self._deleting.discard(uid)  # the next pass tries again
                return
        with self._lock:
            self.pods.pop(uid, None)

    def _report_killed(self, pod: dict[str, Any]) -> None:
        """A scripted (or never started) pod stopped by its deletion: a kubelet reports the
        terminal phase before removing the object (controllers such as Kueue wait for it)."""
        started = (pod.get("status") or {}).get("phase") == "Running"
        code, reason = (143, "Error") if started else (137, "ContainerStatusUnknown")
        stamp = now_rfc3339()
        terminated = {"exitCode": code, "reason": reason, "finishedAt": stamp}
        main = pod["spec"]["containers"][0]["name"]
        with contextlib.suppress(ApiError):  # already gone
            self._patch_status(
                pod,
                {
                    "phase": "Failed",
                    "conditions": _conditions("False", stamp),
                    "containerStatuses": [
                        _container(main, {"terminated": terminated}, ready=False)
                    ],
                },
            )

    # -- addresses ------------------------------------------------------------------
    def ip_of(self, pod: dict[str, Any]) -> str:
        """The pod's IP, allocated when its sandbox is made."""
        uid = pod["metadata"]["uid"]
        with self._lock:
            if uid not in self._ips:
                n = next(self._next_ip)
                self._ips[uid] = f"127.1.{n // 250}.{n % 250 + 2}"
            return self._ips[uid]

    def port_of(self, ip: str, port: str) -> int:
        """A host port standing in for `port` on the pod with `ip`."""
        from kubeharness.control_plane import free_port

        with self._lock:
            key = (ip, port)
            if key not in self._ports:
                self._ports[key] = free_port()
            return self._ports[key]

    def resolve(self, name: str) -> str | None:
        """`<hostname>.<service>.<ns>.svc[.cluster.local]` as cluster DNS answers it, or None.

        CoreDNS answers from the Service's EndpointSlices, but the apiserver refuses loopback
        endpoint addresses (and pods here have loopback IPs), so the EndpointSlice controller
        cannot publish them. This applies the controller's rules to the pods instead: pods
        the Service selects, with an IP and not finished, whose hostname and subdomain match;
        ready when the pod is Ready or the Service publishes not-ready addresses (then a
        terminating pod stays ready, exactly as in a cluster). Of several, the oldest."""
        from kubeharness.pod_run import SVC_NAME

        found = SVC_NAME.match(name)
        if found is None:
            return None
        hostname, service_name, namespace = found.group(1), found.group(2), found.group(3)
        service = self.admin.get(f"api/v1/namespaces/{namespace}/services/{service_name}")
        if service is None or not service["spec"].get("selector"):
            return None
        selector = ",".join(f"{k}={v}" for k, v in service["spec"]["selector"].items())
        publish_not_ready = bool(service["spec"].get("publishNotReadyAddresses"))
        pods = self.admin.items(f"api/v1/namespaces/{namespace}/pods", labelSelector=selector)
        answers = [
            pod
            for pod in sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"])
            if pod["spec"].get("hostname") == hostname
            and pod["spec"].get("subdomain") == service_name
            and (pod.get("status") or {}).get("podIP")
            and pod["status"].get("phase") not in ("Succeeded", "Failed")
            and (publish_not_ready or _is_ready(pod))
        ]
        return str(answers[0]["status"]["podIP"]) if answers else None

    def service_addresses(self, namespace: str, service_name: str) -> list[str]:
        """`ip:port` of every endpoint behind a Service's first port, as kube-proxy would
        route to them: the EndpointSlice controller's rules applied to the pods (see
        `resolve`): selected, with an IP, not finished, ready (or not-ready addresses
        published); a named targetPort resolved in each pod's containers. Oldest first."""
        service = self.admin.get(f"api/v1/namespaces/{namespace}/services/{service_name}")
        if service is None or not service["spec"].get("selector"):
            return []
        port = service["spec"]["ports"][0]
        target = port.get("targetPort", port["port"])
        selector = ",".join(f"{k}={v}" for k, v in service["spec"]["selector"].items())
        publish_not_ready = bool(service["spec"].get("publishNotReadyAddresses"))
        pods = self.admin.items(f"api/v1/namespaces/{namespace}/pods", labelSelector=selector)
        out = []
        for pod in sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"]):
            status = pod.get("status") or {}
            if not status.get("podIP") or status.get("phase") in ("Succeeded", "Failed"):
                continue
            if not (publish_not_ready or _is_ready(pod)):
                continue
            named = {
                p.get("name"): p["containerPort"]
                for container in pod["spec"]["containers"]
                for p in container.get("ports", [])
            }
            number = named.get(target) if isinstance(target, str) else target
            if number is not None:
                out.append(f"{status['podIP']}:{number}")
        return out

    # -- volumes, processes, logs ----------------------------------------------------
    def claim_dir(self, namespace: str, claim: str) -> Path:
        """The host directory behind a bound claim; PodNotReady until it is bound."""
        directory = self.provisioner.directory_of(namespace, claim)
        if directory is None:
            raise PodNotReady(f"PersistentVolumeClaim {claim} is not bound")
        return directory

    def log_path(self, namespace: str, pod: str, container: str) -> Path:
        return self.root / "logs" / namespace / pod / f"{container}.log"

    def processes(self, uid: str, container: str) -> list[psutil.Process]:
        """Every live process of one container (found by its environment marker)."""
        marker = f"{uid}/{container}"
        out = []
        for proc in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error):
                if proc.environ().get(MARKER) == marker:
                    out.append(proc)
        return out

    def kill_container(self, uid: str, container: str) -> None:
        for proc in self.processes(uid, container):
            with contextlib.suppress(psutil.Error):
                proc.kill()

    def run_of(self, namespace: str, name: str) -> PodRun:
        """The newest pod of that name run here (live or gone)."""
        for run in reversed(self.runs):
            if run.namespace == namespace and run.name == name:
                return run
        raise KeyError(f"pod {namespace}/{name} is not running on {self.node_name}")

    def find(
        self, namespace: str, name: str, container: str, match: Callable[[list[str]], bool]
    ) -> list[psutil.Process]:
        """Processes of a pod's container whose command line satisfies `match`."""
        run = self.run_of(namespace, name)
        out = []
        for proc in self.processes(run.uid, container):
            with contextlib.suppress(psutil.Error):
                if match(proc.cmdline()):
                    out.append(proc)
        return out

    def log(self, namespace: str, name: str, container: str) -> str:
        path = self.log_path(namespace, name, container)
        return path.read_text(errors="replace") if path.exists() else ""
