"""A kubelet that really runs worker pods: their containers become local processes.

`op_harness.Kubelet` only moves pod phases. `ProcessKubelet` runs what a pod asks for,
so the operator, the launcher, torchrun and the trainers all run for real: init
containers one after the other, then the main container, with the pod's command, args
and environment; the pod's phase and container statuses follow the processes (Pending
while init containers run, Running while the main container runs, Succeeded on exit 0,
Failed otherwise, with `terminated.exitCode`; 128+N when killed by signal N).

What cannot exist here is played, and nothing else:

- **Images and container isolation.** Every container runs from this virtualenv (its
  `bin/` first on PATH); `image` is ignored. Processes of one container carry
  `KUBELET_CONTAINER=<pod uid>/<container>` in their environment, which is how the
  kubelet finds them all (the cgroup stand-in): when the main process exits, or the pod
  is deleted, whatever is left of the container is killed.
- **Volumes.** Mount paths are absolute (`/etc/finetune`, `/checkpoints`, `/data`), so
  each volume is a host directory and paths are *rewritten* when the pod is
  materialised: in command/args, in env values, and in the string values of ConfigMap
  files that are YAML or JSON (the effective training config names `/checkpoints`,
  `/data/dataset/...`). ConfigMap → files written from the emulator's ConfigMap (its
  `items`, else every key); PVC → one directory per claim (by uid), shared by every pod
  and attempt, created once the claim exists (a missing claim keeps the pod Pending, as
  an unbound one would); emptyDir → one directory per pod and volume.
- **Network namespaces and DNS.** Pods share this host's network: each gets its own pod
  IP (127.0.0.x, any of which is bound to the loopback device on Linux) and
  `FINETUNE_PROGRESS_HOST=<pod IP>` so rank 0 serves /progress there (in a cluster it
  binds 0.0.0.0 inside its own namespace). An env value naming a pod through its
  headless Service (`<hostname>.<subdomain>.<ns>.svc[.cluster.local]`, e.g.
  `PET_MASTER_ADDR`) is replaced by that pod's IP, and `PET_MASTER_PORT` by a free port
  per master pod, since a fixed 29500 would collide with anything else on this host.
- **Resources.** `OMP_NUM_THREADS=1` per container (the 2 shared cores here); GPUs do
  not exist. Secrets (`valueFrom.secretKeyRef`) and ConfigMaps are read from the
  emulator, as a kubelet does, with `data` (base64) or `stringData`.
- **Graceful deletion.** The emulator deletes a pod object at once; the kubelet then
  sends SIGTERM to the main process (PID 1 of a container), waits the pod's
  `terminationGracePeriodSeconds` (capped by `grace_cap` to keep tests short), then
  SIGKILLs the container's processes.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests
import yaml

log = logging.getLogger("process_kubelet")

MARKER = "KUBELET_CONTAINER"
_SVC_NAME = re.compile(r"^([a-z0-9-]+)\.([a-z0-9-]+)\.([a-z0-9-]+)\.svc(\.cluster\.local)?$")
_REWRITTEN_SUFFIXES = (".yaml", ".yml", ".json")


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Api:
    """Minimal thread-safe HTTP access to the emulated apiserver (one session per thread)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()

    @property
    def _http(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False
            self._local.session = session
        return session

    def get(self, path: str) -> dict[str, Any] | None:
        response = self._http.get(f"{self.url}/{path}", timeout=10)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return dict(response.json())

    def items(self, path: str) -> list[dict[str, Any]]:
        return list((self.get(path) or {}).get("items") or [])

    def patch_status(self, pod: dict[str, Any], status: dict[str, Any]) -> bool:
        """Merge-patch a pod's status; False when the pod is gone."""
        meta = pod["metadata"]
        path = f"api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        response = self._http.patch(
            f"{self.url}/{path}",
            data=json.dumps({"status": status}),
            headers={"Content-Type": "application/merge-patch+json"},
            timeout=10,
        )
        if response.status_code == 404:
            return False
        response.raise_for_status()
        return True


class PodNotReady(Exception):
    """The pod cannot start yet (a missing claim, Secret or ConfigMap); retried."""


# ------------------------------------------------------------------------------ rewriting


def rewrite_path(value: str, mounts: dict[str, Path]) -> str:
    """`value` with a leading mount path replaced by its host directory (longest first)."""
    for mount in sorted(mounts, key=len, reverse=True):
        if value == mount or value.startswith(mount.rstrip("/") + "/"):
            return str(mounts[mount]) + value[len(mount.rstrip("/")) :]
    return value


def rewrite_tree(data: Any, mounts: dict[str, Path]) -> Any:
    """Every string in a parsed YAML/JSON document, path-rewritten."""
    if isinstance(data, str):
        return rewrite_path(data, mounts)
    if isinstance(data, list):
        return [rewrite_tree(item, mounts) for item in data]
    if isinstance(data, dict):
        return {key: rewrite_tree(value, mounts) for key, value in data.items()}
    return data


def rewrite_file_text(name: str, text: str, mounts: dict[str, Path]) -> str:
    if not name.endswith(_REWRITTEN_SUFFIXES):
        return text
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    rewritten = rewrite_tree(data, mounts)
    if rewritten == data:
        return text
    if name.endswith(".json"):
        return json.dumps(rewritten, indent=2)
    return yaml.safe_dump(rewritten, sort_keys=False)


# ------------------------------------------------------------------------------ the kubelet


@dataclass
class ContainerRun:
    name: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    started_at: str = ""
    finished_at: str = ""


@dataclass
class PodRun:
    """One pod on this 'node': its directories, IP and container processes."""

    kubelet: ProcessKubelet
    pod: dict[str, Any]
    ip: str
    root: Path
    containers: dict[str, ContainerRun] = field(default_factory=dict)
    current: ContainerRun | None = None
    phase: str = "Pending"
    deleted: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)  # deletion vs. a start
    thread: threading.Thread | None = None

    @property
    def uid(self) -> str:
        return str(self.pod["metadata"]["uid"])

    @property
    def name(self) -> str:
        return str(self.pod["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.pod["metadata"]["namespace"])

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> PodRun:
        self.thread = threading.Thread(target=self._run, name=f"pod-{self.name}", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            self._run_pod()
        except Exception as exc:  # noqa: BLE001 - the pod fails, the kubelet goes on
            log.exception("running pod %s failed", self.name)
            stamp = now_rfc3339()
            terminated = {
                "exitCode": 128,
                "reason": "StartError",
                "message": str(exc)[:300],
                "startedAt": stamp,
                "finishedAt": stamp,
            }
            self._report("Failed", main_state={"terminated": terminated})

    def _run_pod(self) -> None:
        spec = self.pod["spec"]
        while True:  # wait for claims, Secrets and ConfigMaps, as a kubelet does
            if self.deleted.is_set():
                return
            try:
                mounts = self._volumes()
                envs = {
                    c["name"]: self._env(c)
                    for c in [*spec.get("initContainers", []), *spec["containers"]]
                }
                break
            except PodNotReady as exc:
                log.info("pod %s not ready to start: %s", self.name, exc)
                time.sleep(0.5)
        self._report("Pending")
        for container in spec.get("initContainers", []):
            code = self._run_container(container, mounts, envs[container["name"]])
            if code is None:
                return  # deleted
            if code != 0:
                self._report("Failed", main_state={"waiting": {"reason": "PodInitializing"}})
                return
        main = spec["containers"][0]
        code = self._run_container(main, mounts, envs[main["name"]])
        if code is None:
            return
        self._report("Succeeded" if code == 0 else "Failed")

    def _run_container(
        self,
        container: dict[str, Any],
        mounts: dict[str, dict[str, Path]],
        env: dict[str, str],
    ) -> int | None:
        """Run one container to completion; its exit code, or None if the pod was deleted."""
        name = container["name"]
        run = ContainerRun(name, self._log_path(name))
        self.containers[name] = run
        own = mounts[name]
        argv = [rewrite_path(a, own) for a in [*container["command"], *container.get("args", [])]]
        env = {key: rewrite_path(value, own) for key, value in env.items()}
        env[MARKER] = f"{self.uid}/{name}"
        executable = shutil.which(argv[0], path=env.get("PATH"))
        if executable is None:
            raise RuntimeError(f"{argv[0]!r} is not on the container's PATH")
        workdir = Path(rewrite_path(container.get("workingDir", str(self.root)), own))
        workdir.mkdir(parents=True, exist_ok=True)
        run.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock, run.log_path.open("ab") as sink:
            if self.deleted.is_set():
                return None
            run.proc = subprocess.Popen(
                [executable, *argv[1:]],
                env=env,
                cwd=workdir,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            run.started_at = now_rfc3339()
            self.current = run
        if container is self.pod["spec"]["containers"][0]:
            self.phase = "Running"
            self._report("Running", main_state={"running": {"startedAt": run.started_at}})
        code = run.proc.wait()
        run.exit_code = 128 - code if code < 0 else code  # killed by signal N -> 128+N
        run.finished_at = now_rfc3339()
        self.kubelet.kill_container(self.uid, name)  # whatever the main process left behind
        if self.deleted.is_set():
            return None
        if container is not self.pod["spec"]["containers"][0]:
            self._report("Pending")
        return run.exit_code

    def terminate(self, grace: float) -> None:
        """The pod object is gone: SIGTERM the running container, then SIGKILL after `grace`."""
        with self.lock:
            if self.deleted.is_set():
                return
            self.deleted.set()
            run = self.current
        if run is None or run.proc is None or run.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            run.proc.send_signal(signal.SIGTERM)
        try:
            run.proc.wait(grace)
        except subprocess.TimeoutExpired:
            log.info("pod %s: grace period over, killing %s", self.name, run.name)
        self.kubelet.kill_container(self.uid, run.name)
        with contextlib.suppress(subprocess.TimeoutExpired):
            run.proc.wait(10)

    # -- materialising --------------------------------------------------------------
    def _log_path(self, container: str) -> Path:
        return self.kubelet.root / "logs" / self.namespace / self.name / f"{container}.log"

    def _volumes(self) -> dict[str, dict[str, Path]]:
        """{container: {mountPath: host dir}}; ConfigMap files written, paths rewritten."""
        spec = self.pod["spec"]
        host: dict[str, Path] = {}
        config_maps: dict[str, dict[str, Any]] = {}
        for volume in spec.get("volumes", []):
            name = volume["name"]
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                host[name] = self.kubelet.claim_dir(self.namespace, claim)
            elif "emptyDir" in volume:
                host[name] = self.root / "volumes" / name
            elif "configMap" in volume:
                host[name] = self.root / "volumes" / name
                config_maps[name] = volume["configMap"]
            else:
                raise RuntimeError(f"volume {name}: only PVC, emptyDir and ConfigMap are played")
            host[name].mkdir(parents=True, exist_ok=True)
        containers = [*spec.get("initContainers", []), *spec["containers"]]
        mounts = {
            c["name"]: {m["mountPath"]: host[m["name"]] for m in c.get("volumeMounts", [])}
            for c in containers
        }
        view: dict[str, Path] = {}  # the pod's paths as its containers see them
        for container in containers:
            for path, directory in mounts[container["name"]].items():
                view.setdefault(path, directory)
        for name, source in config_maps.items():
            data = self._config_map(source["name"])
            items = source.get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                target = host[name] / item["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(rewrite_file_text(item["path"], data[item["key"]], view))
        return mounts

    def _config_map(self, name: str) -> dict[str, str]:
        found = self.kubelet.api.get(f"api/v1/namespaces/{self.namespace}/configmaps/{name}")
        if found is None:
            raise PodNotReady(f"ConfigMap {name} does not exist")
        return dict(found.get("data") or {})

    def _secret_value(self, name: str, key: str) -> str:
        found = self.kubelet.api.get(f"api/v1/namespaces/{self.namespace}/secrets/{name}")
        if found is None:
            raise PodNotReady(f"Secret {name} does not exist")
        if key in (found.get("data") or {}):
            return base64.b64decode(found["data"][key]).decode()
        if key in (found.get("stringData") or {}):
            return str(found["stringData"][key])
        raise PodNotReady(f"Secret {name} has no key {key}")

    def _field(self, path: str) -> str:
        meta = self.pod["metadata"]
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "status.podIP": self.ip,
            "status.hostIP": "127.0.0.1",
            "spec.nodeName": "process-kubelet",
        }
        if path in simple:
            return str(simple[path])
        label = re.fullmatch(r"metadata\.labels\['(.+)'\]", path)
        if label:
            return str((meta.get("labels") or {}).get(label.group(1), ""))
        raise RuntimeError(f"fieldRef {path} is not played")

    def _env(self, container: dict[str, Any]) -> dict[str, str]:
        env = dict(self.kubelet.base_env)
        env["HOME"] = str(self.root / "home")
        env["TMPDIR"] = str(self.root / "tmp")
        env["HOSTNAME"] = str(self.pod["spec"].get("hostname") or self.name)
        for directory in (env["HOME"], env["TMPDIR"]):
            Path(directory).mkdir(parents=True, exist_ok=True)
        for item in container.get("env", []):
            if "value" in item:
                value = str(item["value"])
            elif "valueFrom" in item:
                source = item["valueFrom"]
                if "secretKeyRef" in source:
                    ref = source["secretKeyRef"]
                    value = self._secret_value(ref["name"], ref["key"])
                elif "configMapKeyRef" in source:
                    ref = source["configMapKeyRef"]
                    data = self._config_map(ref["name"])
                    if ref["key"] not in data:
                        raise PodNotReady(f"ConfigMap {ref['name']} has no key {ref['key']}")
                    value = data[ref["key"]]
                elif "fieldRef" in source:
                    value = self._field(source["fieldRef"]["fieldPath"])
                else:
                    raise RuntimeError(f"env {item['name']}: {sorted(source)} is not played")
            else:
                value = ""
            env[item["name"]] = value
        master = None
        for key, value in list(env.items()):
            if not _SVC_NAME.match(value):
                continue
            pod = self.kubelet.resolve(value, self.pod)
            if pod is None:  # a static stand-in cannot resolve later: start when it can
                raise PodNotReady(f"{key}={value} does not resolve to a pod yet")
            env[key] = self.kubelet.ip_of(pod)  # the DNS stand-in
            if key == "PET_MASTER_ADDR":
                master = pod
        if master is not None and "PET_MASTER_PORT" in env:
            env["PET_MASTER_PORT"] = str(self.kubelet.port_of(master, env["PET_MASTER_PORT"]))
        env["FINETUNE_PROGRESS_HOST"] = self.ip  # the network-namespace stand-in
        return env

    # -- status ---------------------------------------------------------------------
    @staticmethod
    def _terminated(run: ContainerRun, code: int) -> dict[str, Any]:
        return {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": run.started_at or now_rfc3339(),
            "finishedAt": run.finished_at or now_rfc3339(),
        }

    def _container_status(self, name: str, state: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": name,
            "ready": "running" in state,
            "restartCount": 0,
            "image": "finetune-runtime:process-kubelet",
            "imageID": "",
            "state": state,
        }

    def _report(self, phase: str, main_state: dict[str, Any] | None = None) -> None:
        if self.deleted.is_set():
            return
        spec = self.pod["spec"]
        init = []
        for container in spec.get("initContainers", []):
            run = self.containers.get(container["name"])
            if run is None:
                state: dict[str, Any] = {"waiting": {"reason": "PodInitializing"}}
            elif run.exit_code is None:
                state = {"running": {"startedAt": run.started_at}}
            else:
                state = {"terminated": self._terminated(run, run.exit_code)}
            init.append(self._container_status(container["name"], state))
        main = spec["containers"][0]["name"]
        run = self.containers.get(main)
        if main_state is None:
            if run is not None and run.exit_code is not None:
                main_state = {"terminated": self._terminated(run, run.exit_code)}
            else:
                main_state = {"waiting": {"reason": "PodInitializing"}}
        status: dict[str, Any] = {
            "phase": phase,
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "hostIP": "127.0.0.1",
            "startTime": self.pod.get("status", {}).get("startTime") or now_rfc3339(),
            "containerStatuses": [self._container_status(main, main_state)],
        }
        if init:
            status["initContainerStatuses"] = init
        self.pod.setdefault("status", {})["startTime"] = status["startTime"]
        self.phase = phase
        try:
            self.kubelet.api.patch_status(self.pod, status)
        except requests.RequestException as exc:
            log.warning("status of pod %s not written: %s", self.name, exc)


class ProcessKubelet:
    """Runs the pods of the namespaces it is told about (see the module docstring)."""

    def __init__(
        self,
        cluster: Any,
        root: Path,
        *,
        extra_env: dict[str, str] | None = None,
        grace_cap: float = 30.0,
    ) -> None:
        self.api = Api(cluster.url)
        self.root = root
        self.grace_cap = grace_cap
        self.namespaces: set[str] = set()
        self.paused = False
        self.pods: dict[str, PodRun] = {}
        self._ips: dict[str, str] = {}
        self._ports: dict[tuple[str, str], int] = {}
        self._next_ip = itertools.cycle(range(2, 255))
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
        self._thread = threading.Thread(target=self._loop, name="process-kubelet", daemon=True)
        self._thread.start()

    # -- the node agent loop --------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for run in list(self.pods.values()):
            run.terminate(grace=0)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.sync()
            except requests.RequestException:
                continue

    def sync(self) -> None:
        """One pass: start new pods, stop deleted ones."""
        present: dict[str, dict[str, Any]] = {}
        for pod in self.api.items("api/v1/pods"):
            meta = pod["metadata"]
            if meta.get("namespace") not in self.namespaces:
                continue
            present[meta["uid"]] = pod
            phase = (pod.get("status") or {}).get("phase", "Pending")
            if meta.get("deletionTimestamp"):
                continue
            with self._lock:
                if meta["uid"] not in self.pods and phase == "Pending" and not self.paused:
                    root = self.root / "pods" / meta["namespace"] / meta["name"]
                    run = PodRun(self, pod, self.ip_of(pod), root)
                    self.pods[meta["uid"]] = run.start()
        with self._lock:
            gone = [
                run
                for uid, run in self.pods.items()
                if (uid not in present or present[uid]["metadata"].get("deletionTimestamp"))
                and not run.deleted.is_set()
            ]
        for run in gone:
            grace = run.pod["spec"].get("terminationGracePeriodSeconds", 30)
            threading.Thread(
                target=run.terminate, args=(min(float(grace), self.grace_cap),), daemon=True
            ).start()

    # -- addresses ------------------------------------------------------------------
    def ip_of(self, pod: dict[str, Any]) -> str:
        """The pod's IP, allocated on first use (a pod's sandbox gets one before it runs)."""
        uid = pod["metadata"]["uid"]
        with self._lock:
            if uid not in self._ips:
                self._ips[uid] = f"127.0.0.{next(self._next_ip)}"
            return self._ips[uid]

    def port_of(self, pod: dict[str, Any], port: str) -> int:
        with self._lock:
            key = (pod["metadata"]["uid"], port)
            if key not in self._ports:
                self._ports[key] = free_port()
            return self._ports[key]

    def resolve(self, value: str, asking: dict[str, Any]) -> dict[str, Any] | None:
        """The pod a headless-Service DNS name points at (as cluster DNS would), or None.

        Among pods with that hostname and subdomain, finished and deleted ones are
        skipped; of several, the one sharing most labels with the asking pod wins (a
        replacement gang's rank 0, not a terminating one).
        """
        found = _SVC_NAME.match(value)
        if found is None:
            return None
        hostname, subdomain, namespace = found.group(1), found.group(2), found.group(3)
        candidates = [
            pod
            for pod in self.api.items(f"api/v1/namespaces/{namespace}/pods")
            if pod["spec"].get("hostname") == hostname
            and pod["spec"].get("subdomain") == subdomain
            and not pod["metadata"].get("deletionTimestamp")
            and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        ]
        if not candidates:
            return None
        labels = set((asking["metadata"].get("labels") or {}).items())
        return max(
            candidates, key=lambda p: len(labels & set((p["metadata"].get("labels") or {}).items()))
        )

    # -- volumes and processes ------------------------------------------------------
    def claim_dir(self, namespace: str, claim: str) -> Path:
        """The host directory behind a PVC (one per claim uid); PodNotReady if it is absent."""
        found = self.api.get(f"api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}")
        if found is None:
            raise PodNotReady(f"PersistentVolumeClaim {claim} does not exist")
        directory = self.root / "claims" / namespace / f"{claim}-{found['metadata']['uid'][:8]}"
        directory.mkdir(parents=True, exist_ok=True)
        return directory

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
        for run in self.pods.values():
            if run.namespace == namespace and run.name == name:
                return run
        raise KeyError(f"pod {namespace}/{name} was not started by this kubelet")

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
        path = self.root / "logs" / namespace / name / f"{container}.log"
        return path.read_text(errors="replace") if path.exists() else ""
