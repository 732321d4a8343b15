"""One pod on the process node: its containers run as local processes.

Init containers run one after the other, then the main container, with the pod's command,
args and environment; the pod's phase, conditions and container statuses follow the
processes as a kubelet reports them (Pending while init containers run, Running while the
main container runs, Succeeded on exit 0, Failed otherwise; 128+N when killed by signal N).
A main container with a readiness httpGet probe is Ready only while it passes (`probes`).
What cannot exist here (images, namespaces, cgroups) is described in node_agent.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubeharness import probes
from kubeharness.api import STRATEGIC, ApiError
from kubeharness.rewrite import rewrite_file_text, rewrite_path

if TYPE_CHECKING:
    from kubeharness.node_agent import NodeAgent

log = logging.getLogger("node_agent")

MARKER = "KUBELET_CONTAINER"
SVC_NAME = re.compile(r"^([a-z0-9-]+)\.([a-z0-9-]+)\.([a-z0-9-]+)\.svc(\.cluster\.local)?$")


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class PodNotReady(Exception):
    """The pod cannot start yet (an unbound claim, a missing Secret, an unresolved name)."""


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
    """One pod: its directories, IP and container processes."""

    agent: NodeAgent
    pod: dict[str, Any]
    ip: str
    root: Path
    containers: dict[str, ContainerRun] = field(default_factory=dict)
    current: ContainerRun | None = None
    phase: str = "Pending"
    probed_ready: bool | None = None  # the readiness probe's verdict; None: no probe
    deleted: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
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

    @property
    def main(self) -> dict[str, Any]:
        return dict(self.pod["spec"]["containers"][0])

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> PodRun:
        self.thread = threading.Thread(target=self._run, name=f"pod-{self.name}", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            self._run_pod()
        except Exception as exc:  # noqa: BLE001 - the pod fails, the node goes on
            log.exception("running pod %s failed", self.name)
            stamp = now_rfc3339()
            terminated = {
                "exitCode": 128,
                "reason": "StartError",
                "message": str(exc)[:300],
                "startedAt": stamp,
                "finishedAt": stamp,
            }
            self.report("Failed", main_state={"terminated": terminated})
        finally:
            self.finished.set()

    def _run_pod(self) -> None:
        spec = self.pod["spec"]
        self.report("Pending")  # the sandbox has its IP: DNS and EndpointSlices see it
        while True:  # wait for claims, Secrets, ConfigMaps and names, as a kubelet does
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
        for container in spec.get("initContainers", []):
            code = self._run_container(container, mounts, envs[container["name"]])
            if code is None:
                return  # deleted
            if code != 0:
                self.report("Failed", main_state={"waiting": {"reason": "PodInitializing"}})
                return
        code = self._run_container(self.main, mounts, envs[self.main["name"]])
        if code is None:
            return
        self.report("Succeeded" if code == 0 else "Failed")

    def _run_container(
        self, container: dict[str, Any], mounts: dict[str, dict[str, Path]], env: dict[str, str]
    ) -> int | None:
        """Run one container to completion; its exit code, or None if the pod was deleted."""
        name = container["name"]
        run = ContainerRun(name, self.agent.log_path(self.namespace, self.name, name))
        self.containers[name] = run
        own = mounts[name]
        argv = [rewrite_path(a, own) for a in [*container["command"], *container.get("args", [])]]
        argv = [self.ip if a == "0.0.0.0" else a for a in argv]  # "every interface" of the pod
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
        is_main = name == self.main["name"]
        if is_main:
            self._start_probing(container, run)
            self.report("Running", main_state={"running": {"startedAt": run.started_at}})
        code = run.proc.wait()
        run.exit_code = 128 - code if code < 0 else code  # killed by signal N -> 128+N
        run.finished_at = now_rfc3339()
        self.agent.kill_container(self.uid, name)  # whatever the main process left behind
        if self.deleted.is_set():
            return None
        if not is_main:
            self.report("Pending")
        return run.exit_code

    def _start_probing(self, container: dict[str, Any], run: ContainerRun) -> None:
        """Not ready until the readiness probe passes (see probes), if there is one."""
        url = probes.readiness_url(container, self.ip)
        if url is None:
            return
        self.probed_ready = False
        running = {"running": {"startedAt": run.started_at}}

        def changed(ready: bool) -> None:
            self.probed_ready = ready
            self.report("Running", main_state=running)

        def alive() -> bool:
            return run.proc is not None and run.proc.poll() is None and not self.deleted.is_set()

        args = (url, alive, changed)
        threading.Thread(
            target=probes.watch, args=args, name=f"probe-{self.name}", daemon=True
        ).start()

    def terminate(self, grace: float) -> None:
        """Graceful stop: SIGTERM the running container, SIGKILL after `grace` seconds."""
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
        self.agent.kill_container(self.uid, run.name)
        with contextlib.suppress(subprocess.TimeoutExpired):
            run.proc.wait(10)
        code = run.proc.returncode
        run.exit_code = 128 - code if code is not None and code < 0 else code
        run.finished_at = now_rfc3339()

    # -- materialising --------------------------------------------------------------
    def _volumes(self) -> dict[str, dict[str, Path]]:
        """{container: {mountPath: host dir}}; ConfigMap files written, paths rewritten."""
        spec = self.pod["spec"]
        host: dict[str, Path] = {}
        config_maps: dict[str, dict[str, Any]] = {}
        for volume in spec.get("volumes", []):
            name = volume["name"]
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                host[name] = self.agent.claim_dir(self.namespace, claim)
            elif "emptyDir" in volume:
                host[name] = self._stable(name, self.root / "volumes" / name)
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

    def _stable(self, volume: str, directory: Path) -> Path:
        """A path for this pod's volume that stays the same across attempts of one rank.

        In a cluster every attempt sees its emptyDir at the same mount path, so paths the
        runtime records (a checkpoint's config.yaml names the dataset's path) match on resume.
        Here each pod's directory differs, so it is reached through a link named by the pod's
        hostname, pointed at the newest pod (gangs never overlap: the old one is gone first)."""
        directory.mkdir(parents=True, exist_ok=True)
        hostname = self.pod["spec"].get("hostname") or self.name
        link = self.agent.root / "mounts" / self.namespace / hostname / volume
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{volume}.{self.uid[:8]}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(directory, target_is_directory=True)
        tmp.replace(link)
        return link

    def _config_map(self, name: str) -> dict[str, str]:
        found = self.agent.api.get(f"api/v1/namespaces/{self.namespace}/configmaps/{name}")
        if found is None:
            raise PodNotReady(f"ConfigMap {name} does not exist")
        return dict(found.get("data") or {})

    def _secret_value(self, name: str, key: str) -> str:
        found = self.agent.api.get(f"api/v1/namespaces/{self.namespace}/secrets/{name}")
        if found is None:
            raise PodNotReady(f"Secret {name} does not exist")
        if key in (found.get("data") or {}):
            return base64.b64decode(found["data"][key]).decode()
        raise PodNotReady(f"Secret {name} has no key {key}")

    def _field(self, path: str) -> str:
        meta = self.pod["metadata"]
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "status.podIP": self.ip,
            "status.hostIP": "127.0.0.1",
            "spec.nodeName": self.agent.node_name,
        }
        if path in simple:
            return str(simple[path])
        label = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if label:
            return str((meta.get(label.group(1)) or {}).get(label.group(2), ""))
        raise RuntimeError(f"fieldRef {path} is not played")

    def _env_value(self, item: dict[str, Any]) -> str:
        if "value" in item:
            return str(item["value"])
        source = item.get("valueFrom")
        if not source:
            return ""
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            return self._secret_value(ref["name"], ref["key"])
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            data = self._config_map(ref["name"])
            if ref["key"] not in data:
                raise PodNotReady(f"ConfigMap {ref['name']} has no key {ref['key']}")
            return data[ref["key"]]
        if "fieldRef" in source:
            return self._field(source["fieldRef"]["fieldPath"])
        raise RuntimeError(f"env {item['name']}: {sorted(source)} is not played")

    def _env(self, container: dict[str, Any]) -> dict[str, str]:
        env = dict(self.agent.base_env)
        env["HOME"] = str(self.root / "home")
        env["TMPDIR"] = str(self.root / "tmp")
        env["HOSTNAME"] = str(self.pod["spec"].get("hostname") or self.name)
        for directory in (env["HOME"], env["TMPDIR"]):
            Path(directory).mkdir(parents=True, exist_ok=True)
        for item in container.get("env", []):
            env[item["name"]] = self._env_value(item)
        master_ip = None
        for key, value in list(env.items()):
            if not SVC_NAME.match(value):
                continue
            ip = self.agent.resolve(value)
            if ip is None:  # the stand-in resolves once, at start: wait until it can
                raise PodNotReady(f"{key}={value} does not resolve yet")
            env[key] = ip  # what cluster DNS answers, from the EndpointSlices
            if key == "PET_MASTER_ADDR":
                master_ip = ip
        if master_ip is not None and "PET_MASTER_PORT" in env:
            env["PET_MASTER_PORT"] = str(self.agent.port_of(master_ip, env["PET_MASTER_PORT"]))
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

    def _container_status(
        self, name: str, state: dict[str, Any], ready: bool | None = None
    ) -> dict[str, Any]:
        return {
            "name": name,
            "ready": "running" in state if ready is None else ready,
            "restartCount": 0,
            "image": self.main.get("image", "finetune-runtime"),
            "imageID": "",
            "started": "running" in state,
            "state": state,
        }

    def _init_statuses(self) -> list[dict[str, Any]]:
        out = []
        for container in self.pod["spec"].get("initContainers", []):
            run = self.containers.get(container["name"])
            if run is None:
                state: dict[str, Any] = {"waiting": {"reason": "PodInitializing"}}
            elif run.exit_code is None:
                state = {"running": {"startedAt": run.started_at}}
            else:
                state = {"terminated": self._terminated(run, run.exit_code)}
            out.append(self._container_status(container["name"], state))
        return out

    def status(self, phase: str, main_state: dict[str, Any] | None = None) -> dict[str, Any]:
        """The pod status a kubelet would write in this state."""
        run = self.containers.get(self.main["name"])
        if main_state is None:
            if run is not None and run.exit_code is not None:
                main_state = {"terminated": self._terminated(run, run.exit_code)}
            else:
                main_state = {"waiting": {"reason": "PodInitializing"}}
        stamp = now_rfc3339()
        is_ready = phase == "Running" and self.probed_ready is not False
        ready = "True" if is_ready else "False"
        init_done = "True" if phase != "Pending" or self.current is not None else "False"
        conditions = [
            {"type": "Initialized", "status": init_done, "lastTransitionTime": stamp},
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": stamp},
            {"type": "Ready", "status": ready, "lastTransitionTime": stamp},
        ]
        status: dict[str, Any] = {
            "phase": phase,
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.pod.setdefault("status", {}).get("startTime") or stamp,
            "conditions": conditions,
            "containerStatuses": [self._container_status(self.main["name"], main_state, is_ready)],
        }
        init = self._init_statuses()
        if init:
            status["initContainerStatuses"] = init
        return status

    def report(self, phase: str, main_state: dict[str, Any] | None = None) -> None:
        if self.deleted.is_set() and phase not in ("Succeeded", "Failed"):
            return
        status = self.status(phase, main_state)
        self.pod["status"]["startTime"] = status["startTime"]
        self.phase = phase
        path = f"api/v1/namespaces/{self.namespace}/pods/{self.name}/status"
        try:
            self.agent.api.patch(path, {"status": status}, STRATEGIC)
        except (ApiError, OSError) as exc:
            log.warning("status of pod %s not written: %s", self.name, exc)
