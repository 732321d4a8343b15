"""An emulated cluster for end-to-end tests of the real operator process.

- `ApiServer`: kmock's KubernetesEmulator plus the apiserver behaviours the operator and
  kopf rely on and the emulator lacks: uid/creationTimestamp/resourceVersion/generation,
  namespace filled from the URL, status-subresource semantics, resourceVersion
  preconditions, JSON-patch `test` failures as 422, Pods created in phase Pending.
- `Cluster`: that server over HTTP on 127.0.0.1 (its own thread and event loop), the CRD
  registered from crds/finetunejob.yaml, a kubeconfig pointing at it, and a garbage
  collector that deletes objects whose controller owner is gone (what
  kube-controller-manager does; the emulator has no GC).
- `Kubelet`: plays the node agents that cannot exist here: moves pod phases and assigns
  distinct 127.0.0.x pod IPs, so a test can serve rank 0's progress on that address.
- `Operator`: the real `finetune-operator` console script as a subprocess.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jsonpatch
import kmock
import requests
import yaml
from kmock._internal import dicts as kdicts
from kmock._internal import enums, k8s

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "finetunejob.yaml"
# The gang schedulers' PodGroup CRDs (published, unmodified; see tests/operator/crds/README.md).
EXTRA_CRDS = sorted((ROOT / "tests" / "operator" / "crds").glob("*.yaml"))
JOBS = "apis/finetune.dev/v1alpha1"


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for(
    check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (requests.RequestException, KeyError, IndexError, TypeError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}: last={last!r}")


class ApiServer(kmock.KubernetesEmulator):
    """KubernetesEmulator with the apiserver bookkeeping real clients depend on."""

    # kmock matches each request against its reactions by scanning every request recorded
    # so far, so serving gets slower with each request (quadratic over a test module). The
    # emulator needs only the current request for matching: older ones are dropped, and a
    # light (method, path, User-Agent) log is kept for assertions instead.
    KEEP_REQUESTS = 50

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._rv = itertools.count(1)
        self.log: list[tuple[str, str, str]] = []

    def _has_status(self, resource: Any) -> bool:
        return resource in self.resources and "status" in self.resources[resource].subresources

    async def _handle(self, request: Any) -> Any:
        self.log.append(
            (str(request.method), request.url.path, request.headers.get("User-Agent", ""))
        )
        del self._requests[: -self.KEEP_REQUESTS]
        if request.resource is not None:
            try:
                if request.action == enums.action.CREATE and isinstance(request.data, dict):
                    self._prepare_create(request)
                elif request.action == enums.action.UPDATE and request.name is not None:
                    self._prepare_update(request)
            except k8s.KubernetesError as exc:
                return await self._render_error(exc)
        return await super()._handle(request)

    def _prepare_create(self, request: Any) -> None:
        data = request.data
        meta = data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace
        for key in ("deletionTimestamp", "resourceVersion", "uid"):
            meta.pop(key, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["resourceVersion"] = str(next(self._rv))
        meta["generation"] = 1
        if self._has_status(request.resource):
            data.pop("status", None)
        if request.resource == kmock.resource("v1", "pods"):
            data["status"] = {"phase": "Pending"}

    def _prepare_update(self, request: Any) -> None:
        key = (request.resource, request.namespace, request.name)
        if key not in self._objects or self._objects[key].deleted:
            return  # the emulator answers 404
        old = copy.deepcopy(self._objects[key].raw)
        status_only = request.subresource == "status"
        has_status = self._has_status(request.resource)
        data = request.data
        if isinstance(data, dict):
            meta = data.get("metadata") or {}
            wanted = meta.get("resourceVersion")
            if wanted and wanted != old.get("metadata", {}).get("resourceVersion"):
                raise k8s.KubernetesError(409, "Conflict", "the object has been modified")
            if status_only:
                kept = {"status": data.get("status")}
                data.clear()
                data.update(kept)
            elif has_status:
                data.pop("status", None)
            shaped = old_shape(old, data)
            if shaped != old:  # RFC 7386 shape change: rewrite the stored version first
                self._objects[key].history[-1] = shaped
            new = kdicts.patch_dict(shaped, data)
            meta = data.setdefault("metadata", {})
            meta["resourceVersion"] = str(next(self._rv))
            if new.get("spec") != old.get("spec"):
                meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        elif isinstance(data, list):

            def kept(op: dict[str, Any]) -> bool:
                path = str(op.get("path", ""))
                on_status = path == "/status" or path.startswith("/status/")
                if path == "/metadata/resourceVersion":
                    return True  # kopf's optimistic-concurrency `test`
                return on_status if status_only else not (has_status and on_status)

            ops = [op for op in data if kept(op)]
            try:
                new = jsonpatch.apply_patch(old, ops, in_place=False)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise k8s.KubernetesError(422, "Invalid", str(exc)) from None
            ops.append(
                {"op": "add", "path": "/metadata/resourceVersion", "value": str(next(self._rv))}
            )
            if new.get("spec") != old.get("spec"):
                generation = int(old["metadata"].get("generation", 1)) + 1
                ops.append({"op": "add", "path": "/metadata/generation", "value": generation})
            data[:] = ops


def _conform(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """RFC 7386: a patch replaces a value of another shape (the emulator refuses to).

    Where a dict meets a scalar (or the reverse), the value is blanked in place, so
    the emulator's recursive merge then writes the patch value as a whole.
    """
    for key, value in patch.items():
        if key not in target or value is None:
            continue
        current = target[key]
        if isinstance(value, dict) and isinstance(current, Mapping):
            _conform(current, value)
        elif isinstance(value, dict) != isinstance(current, Mapping):
            target[key] = {} if isinstance(value, dict) else None


def old_shape(old: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """A copy of `old` with the values the patch replaces by another shape blanked."""
    out = copy.deepcopy(old)
    _conform(out, patch)
    return out


class Cluster:
    """The emulated apiserver on 127.0.0.1, plus garbage collection, in one thread."""

    CHILD_KINDS = ("pods", "configmaps", "services", "persistentvolumeclaims")

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.url = ""
        self.kubeconfig = workdir / "kubeconfig"
        self.server: ApiServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._gc_stop = threading.Event()
        self._gc_thread: threading.Thread | None = None
        self.http = requests.Session()
        self.http.trust_env = False

    # ------------------------------------------------------------------------ lifecycle
    def start(self) -> Cluster:
        ready = threading.Event()
        crd = yaml.safe_load(CRD_PATH.read_text())

        extra = [yaml.safe_load(path.read_text()) for path in EXTRA_CRDS]

        async def serve() -> None:
            server = ApiServer()
            server.resources.load_bundled()
            for definition in [crd, *extra]:
                names, version = definition["spec"]["names"], definition["spec"]["versions"][0]
                key = f"{definition['spec']['group']}/{version['name']}/{names['plural']}"
                server.resources[key] = kmock.ResourceInfo(
                    kind=names["kind"],
                    singular=names["singular"],
                    namespaced=definition["spec"]["scope"] == "Namespaced",
                    shortnames=set(names.get("shortNames", [])),
                    categories=set(names.get("categories", [])),
                    subresources=set(version.get("subresources", {})),
                    verbs={"create", "delete", "get", "list", "patch", "watch"},
                )
            self._stop = asyncio.Event()
            async with server, kmock.Server(server) as http:
                self.server = server
                self.url = str(http.url).rstrip("/")
                ready.set()
                await self._stop.wait()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(serve())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="apiserver", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("the emulated apiserver did not start")
        self.post("apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        self.kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
                    "users": [{"name": "tester", "user": {"token": "emulator-token"}}],
                    "contexts": [
                        {"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}
                    ],
                    "current-context": "emulator",
                }
            )
        )
        self._gc_thread = threading.Thread(target=self._collect_garbage, name="gc", daemon=True)
        self._gc_thread.start()
        return self

    def stop(self) -> None:
        self._gc_stop.set()
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` in the apiserver's event loop thread (to read its state safely)."""
        assert self._loop is not None

        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(10)

    def creations(self, kind: str, namespace: str) -> dict[str, int]:
        """How many times each object of `kind` was created (re-creation after deletion counts)."""

        def count() -> dict[str, int]:
            assert self.server is not None
            out: dict[str, int] = {}
            for (resource, ns, name), obj in self.server.objects.items():
                if resource.plural != kind or ns != namespace:
                    continue
                made, previous = 0, None
                for version in obj.history:
                    if version is not None and previous is None:
                        made += 1
                    previous = version
                out[name] = made
            return out

        return dict(self.on_loop(count))

    def requests_seen(self) -> list[tuple[str, str, str]]:
        """(method, path, User-Agent) of every request the apiserver served, in order."""

        def collect() -> list[tuple[str, str, str]]:
            assert self.server is not None
            return list(self.server.log)

        return list(self.on_loop(collect))

    # ------------------------------------------------------------------------------ HTTP
    def _check(self, response: requests.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            raise requests.HTTPError(
                f"{response.request.method} {response.url}: {response.status_code} "
                f"{response.text[:300]}",
                response=response,
            )
        return response.json() if response.content else {}

    def get(self, path: str) -> dict[str, Any] | None:
        response = self.http.get(f"{self.url}/{path}", timeout=10)
        if response.status_code == 404:
            return None
        return self._check(response)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._check(self.http.post(f"{self.url}/{path}", json=body, timeout=10))

    def patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/merge-patch+json"}
        return self._check(
            self.http.patch(
                f"{self.url}/{path}", data=json.dumps(body), headers=headers, timeout=10
            )
        )

    def delete(self, path: str) -> None:
        response = self.http.delete(f"{self.url}/{path}", timeout=10)
        if response.status_code != 404:
            self._check(response)

    def items(self, path: str) -> list[dict[str, Any]]:
        return list((self.get(path) or {}).get("items") or [])

    # ------------------------------------------------------------------------ resources
    def create_job(self, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": name},
            "spec": spec,
        }
        return self.post(f"{JOBS}/namespaces/{namespace}/finetunejobs", body)

    def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(f"{JOBS}/namespaces/{namespace}/finetunejobs/{name}")

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return (self.job(namespace, name) or {}).get("status") or {}

    def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.patch(f"{JOBS}/namespaces/{namespace}/finetunejobs/{name}", patch)

    def delete_job(self, namespace: str, name: str) -> None:
        self.delete(f"{JOBS}/namespaces/{namespace}/finetunejobs/{name}")

    def children(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        return self.items(f"api/v1/namespaces/{namespace}/{kind}")

    def pods(self, namespace: str, attempt: int | None = None) -> list[dict[str, Any]]:
        pods = self.children("pods", namespace)
        if attempt is not None:
            pods = [
                p
                for p in pods
                if p["metadata"]["labels"].get("finetune.dev/attempt") == str(attempt)
            ]
        return sorted(pods, key=lambda p: p["metadata"]["name"])

    def events(self, namespace: str) -> list[dict[str, Any]]:
        return self.children("events", namespace)

    # --------------------------------------------------------------- garbage collection
    def _collect_garbage(self) -> None:
        while not self._gc_stop.wait(0.5):
            try:
                self.collect_garbage_once()
            except requests.RequestException:
                continue

    def collect_garbage_once(self) -> int:
        """Delete every child whose controlling FineTuneJob no longer exists (by uid)."""
        live = {job["metadata"]["uid"] for job in self.items(f"{JOBS}/finetunejobs")}
        removed = 0
        for kind in self.CHILD_KINDS:
            for obj in self.items(f"api/v1/{kind}"):
                meta = obj["metadata"]
                owners = [ref for ref in meta.get("ownerReferences") or [] if ref.get("controller")]
                if owners and owners[0]["uid"] not in live:
                    self.delete(f"api/v1/namespaces/{meta['namespace']}/{kind}/{meta['name']}")
                    removed += 1
        return removed

    def delete_jobs(self, namespace: str) -> None:
        """Delete every job in a namespace and wait for its finalizer to be released."""
        path = f"{JOBS}/namespaces/{namespace}/finetunejobs"
        for job in self.items(path):
            self.delete(f"{path}/{job['metadata']['name']}")
        wait_for(lambda: self.items(path) == [], what=f"jobs in {namespace} released")


class Kubelet:
    """Plays scheduler + kubelet: pod phases and distinct 127.0.0.x pod IPs."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._ips = itertools.cycle(range(2, 255))
        self.auto_run = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kubelet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _path(self, pod: dict[str, Any]) -> str:
        meta = pod["metadata"]
        return f"api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"

    def run(self, pod: dict[str, Any]) -> str:
        """Pending -> Running with a fresh pod IP; returns the IP."""
        ip = f"127.0.0.{next(self._ips)}"
        self.cluster.patch(
            self._path(pod),
            {
                "status": {
                    "phase": "Running",
                    "podIP": ip,
                    "podIPs": [{"ip": ip}],
                    "hostIP": "127.0.0.1",
                    "startTime": now_rfc3339(),
                    "containerStatuses": [
                        {
                            "name": "trainer",
                            "ready": True,
                            "restartCount": 0,
                            "image": "runtime",
                            "imageID": "",
                            "state": {"running": {"startedAt": now_rfc3339()}},
                        }
                    ],
                }
            },
        )
        return ip

    def finish(self, pod: dict[str, Any], exit_code: int = 0, reason: str | None = None) -> None:
        """The trainer exits: Succeeded on 0, Failed otherwise."""
        terminated = {
            "exitCode": exit_code,
            "reason": reason or ("Completed" if exit_code == 0 else "Error"),
            "startedAt": now_rfc3339(),
            "finishedAt": now_rfc3339(),
        }
        self.cluster.patch(
            self._path(pod),
            {
                "status": {
                    "phase": "Succeeded" if exit_code == 0 else "Failed",
                    "containerStatuses": [
                        {
                            "name": "trainer",
                            "ready": False,
                            "restartCount": 0,
                            "image": "runtime",
                            "imageID": "",
                            "state": {"terminated": terminated},
                        }
                    ],
                }
            },
        )

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            if not self.auto_run:
                continue
            try:
                for pod in self.cluster.items("api/v1/pods"):
                    pending = (pod.get("status") or {}).get("phase", "Pending") == "Pending"
                    if pending and not pod["metadata"].get("deletionTimestamp"):
                        self.run(pod)
            except requests.RequestException:
                continue


class Operator:
    """The real operator: the `finetune-operator` console script in a subprocess."""

    def __init__(
        self, cluster: Cluster, workdir: Path, progress_port: int, resync_seconds: float = 1.0
    ) -> None:
        self.cluster = cluster
        self.resync_seconds = resync_seconds
        self.workdir = workdir
        self.progress_port = progress_port
        self.metrics_port = 0
        self.health_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "operator.log"
        self.starts = 0
        self.extra_args: list[str] = []  # e.g. --leader-elect

    @staticmethod
    def executable() -> str:
        found = shutil.which("finetune-operator", path=str(Path(sys.executable).parent))
        if found is None:
            raise RuntimeError("finetune-operator is not installed in this virtualenv")
        return found

    def start(self) -> Operator:
        self.metrics_port, self.health_port = free_port(), free_port()
        self.starts += 1
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("KUBERNETES_", "FINETUNE_OPERATOR_"))
        }
        env |= {
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "NO_PROXY": "*",
            "no_proxy": "*",
            "FINETUNE_OPERATOR_RESYNC_SECONDS": str(self.resync_seconds),
        }
        command = [
            self.executable(),
            "--all-namespaces",
            "--metrics-port",
            str(self.metrics_port),
            "--health-port",
            str(self.health_port),
            "--bind-address",
            "127.0.0.1",
            "--progress-port",
            str(self.progress_port),
            "--default-image",
            "finetune-runtime:test",
            "--log-format",
            "full",
            *self.extra_args,
        ]
        log = self.log_path.open("ab")
        log.write(f"\n===== operator start #{self.starts} =====\n".encode())
        log.flush()
        self.proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self.healthy, timeout=60, interval=0.2, what="operator /healthz")
        return self

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"the operator exited:\n{self.logs()[-3000:]}")
        try:
            response = requests.get(
                f"http://127.0.0.1:{self.health_port}/healthz",
                timeout=2,
                proxies={"http": "", "https": ""},
            )
        except requests.RequestException:
            return False
        return response.status_code == 200

    def metrics(self) -> str:
        response = requests.get(
            f"http://127.0.0.1:{self.metrics_port}/metrics",
            timeout=5,
            proxies={"http": "", "https": ""},
        )
        response.raise_for_status()
        return response.text

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)
