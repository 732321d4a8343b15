"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager
and kube-scheduler, built by `make kube` from the Go modules pinned under kube/.

The apiserver runs as a cluster's would: TLS with client-certificate authentication, RBAC
authorization, the default admission plugins, service-account token signing, CRD
validation, pruning, CEL and an audit log of every request (which tests read to count and
attribute requests). Controllers run with their bootstrap identities. What a kubelet does
is played by `node_agent.NodeAgent`; nodes at scale by kwok (`kwok.Kwok`).
"""

from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen

import requests
import yaml

from kubeharness import processes
from kubeharness.pki import KeyPair, Pki

ROOT = Path(__file__).resolve().parents[2]
KUBE_MODULE = ROOT / "kube" / "kubernetes" / "go.mod"

# Controllers a fine-tuning cluster relies on. nodelifecycle is left out on purpose: the
# node agent heartbeats its Node but no controller should taint kwok's fake nodes.
CONTROLLERS = (
    "garbage-collector-controller",
    "endpointslice-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "persistentvolume-binder-controller",
    "persistentvolumeclaim-protection-controller",
    "persistentvolume-protection-controller",
    "deployment-controller",
    "replicaset-controller",
    "clusterrole-aggregation-controller",
)

AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}


def kube_version() -> str:
    """The pinned Kubernetes release, e.g. 'v1.37.2' (from kube/kubernetes/go.mod)."""
    found = re.search(r"^require k8s.io/kubernetes (v[0-9.]+)$", KUBE_MODULE.read_text(), re.M)
    if found is None:
        raise RuntimeError(f"{KUBE_MODULE}: no `require k8s.io/kubernetes vX.Y.Z` line")
    return found.group(1)


def binaries() -> Path:
    """The directory holding the built control plane; a clear error when it is missing."""
    directory = ROOT / ".cache" / "kube" / kube_version()
    names = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
    missing = [name for name in names if not (directory / name).exists()]
    if missing:
        raise RuntimeError(
            f"the test control plane is not built ({', '.join(missing)} missing in "
            f"{directory}): run `make kube` (needs Go 1.26+)"
        )
    return directory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kubeconfig(server: str, ca: Path, *, client: KeyPair | None = None, token: str = "") -> dict:
    user: dict[str, str] = {}
    if client is not None:
        user = {"client-certificate": str(client.cert), "client-key": str(client.key)}
    if token:
        user = {"token": token}
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
        "current-context": "test",
    }


@dataclass
class ControlPlane:
    """etcd + apiserver + controller-manager + scheduler under `workdir` (started by `start`)."""

    workdir: Path
    version: str = field(default_factory=kube_version)
    url: str = ""
    procs: dict[str, Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bin = binaries()
        self.pki = Pki(self.workdir / "pki")
        self.admin = self.pki.client("admin", "kubernetes-admin", ("system:masters",))
        self.admin_kubeconfig = self.workdir / "admin.kubeconfig"
        self.audit_log = self.workdir / "audit.log"
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------------- lifecycle
    def start(self) -> ControlPlane:
        try:
            self._start_etcd()
            self._start_apiserver()
            self._write_kubeconfig(self.admin_kubeconfig, client=self.admin)
            self._start_controllers()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for name in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            processes.stop(self.procs.pop(name, None))

    def log(self, name: str) -> str:
        return processes.tail(self.workdir / f"{name}.log")

    def _spawn(self, name: str, args: list[str]) -> None:
        self.procs[name] = processes.spawn(
            [str(self.bin / name), *args], self.workdir / f"{name}.log"
        )

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn(
            "etcd",
            [
                "--name=test",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=test=http://127.0.0.1:{peer}",
                "--listen-metrics-urls=",
                "--log-level=warn",
                # A test cluster's data is throwaway: skipping fsync keeps etcd fast on a
                # shared disk without changing what the apiserver sees.
                "--unsafe-no-fsync",
            ],
        )
        self._wait(lambda: self._http_ok(f"{self.etcd_url}/health"), "etcd", 60)

    def _start_apiserver(self) -> None:
        serving = self.pki.serving("apiserver")
        sa = self.pki.service_account_keys()
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        self.sa_keys = sa
        self.apiserver_args = [
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            # The apiserver refuses a loopback advertise address. It is only ever published
            # (the `kubernetes` Service, whose endpoints are not reconciled here) and never
            # dialled: TEST-NET-1 (RFC 5737), an address no network routes.
            "--advertise-address=192.0.2.1",
            "--endpoint-reconciler-type=none",
            f"--secure-port={self.port}",
            f"--tls-cert-file={serving.cert}",
            f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={self.pki.ca}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-key-file={sa.cert}",
            f"--service-account-signing-key-file={sa.key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--api-audiences=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--allow-privileged=false",
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-mode=batch",
            "--audit-log-batch-max-wait=1s",
            "--audit-log-maxsize=1024",
            # The apiserver dials node agents on loopback for logs; they use test certs.
            f"--kubelet-certificate-authority={self.pki.ca}",
            "--kubelet-preferred-address-types=InternalIP",
            "--profiling=false",
            "--v=1",
        ]
        self._spawn("kube-apiserver", self.apiserver_args)
        self._wait(self._apiserver_ready, "kube-apiserver /readyz", 120)

    def restart_apiserver(self, down: float = 0.0) -> None:
        """Stop kube-apiserver (clients' connections and watches break), wait `down` seconds,
        start it again on the same port and etcd: its watch cache starts afresh, so a watch
        resumed from an older resourceVersion is answered 410 Gone."""
        processes.stop(self.procs.pop("kube-apiserver"))
        time.sleep(down)
        self._spawn("kube-apiserver", self.apiserver_args)
        self._wait(self._apiserver_ready, "kube-apiserver /readyz after a restart", 120)

    def _start_controllers(self) -> None:
        cm = self.pki.client("controller-manager", "system:kube-controller-manager")
        cm_config = self.workdir / "controller-manager.kubeconfig"
        self._write_kubeconfig(cm_config, client=cm)
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={cm_config}",
                f"--authentication-kubeconfig={cm_config}",
                f"--authorization-kubeconfig={cm_config}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                f"--controllers={','.join(CONTROLLERS)}",
                f"--service-account-private-key-file={self.sa_keys.key}",
                f"--root-ca-file={self.pki.ca}",
                # Each controller runs as its own ServiceAccount with its bootstrap role, as in a
                # kubeadm cluster (the controller-manager identity alone may do little).
                "--use-service-account-credentials=true",
                "--v=1",
            ],
        )
        sched = self.pki.client("scheduler", "system:kube-scheduler")
        sched_config = self.workdir / "scheduler.kubeconfig"
        self._write_kubeconfig(sched_config, client=sched)
        self._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={sched_config}",
                f"--authentication-kubeconfig={sched_config}",
                f"--authorization-kubeconfig={sched_config}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--v=1",
            ],
        )

    def _wait_ready(self) -> None:
        """The serviceaccount controller has made `default` in `default` (controllers work)."""
        session = self.session()
        self._wait(
            lambda: (
                session.get(
                    f"{self.url}/api/v1/namespaces/default/serviceaccounts/default", timeout=5
                ).status_code
                == 200
            ),
            "kube-controller-manager (the default ServiceAccount)",
            120,
        )

    # --------------------------------------------------------------------------- access
    def session(self, client: KeyPair | None = None) -> requests.Session:
        """An HTTPS session to the apiserver as `client` (default: the admin)."""
        session = requests.Session()
        session.trust_env = False
        session.verify = str(self.pki.ca)
        pair = client or self.admin
        session.cert = (str(pair.cert), str(pair.key))
        return session

    def _write_kubeconfig(
        self, path: Path, *, client: KeyPair | None = None, token: str = ""
    ) -> Path:
        path.write_text(
            yaml.safe_dump(kubeconfig(self.url, self.pki.ca, client=client, token=token))
        )
        return path

    def token_kubeconfig(self, path: Path, token: str) -> Path:
        """A kubeconfig authenticating with a bearer token (a ServiceAccount's)."""
        return self._write_kubeconfig(path, token=token)

    def audit_events(self) -> list[dict]:
        """Every request the apiserver has finished, from its audit log (flushed each second)."""
        if not self.audit_log.exists():
            return []
        events = []
        for line in self.audit_log.read_text(errors="replace").splitlines():
            if line.strip():
                events.append(json.loads(line))
        return events

    # ---------------------------------------------------------------------------- waits
    def _apiserver_ready(self) -> bool:
        self._check_alive()
        try:
            response = self.session().get(f"{self.url}/readyz", timeout=5)
        except requests.RequestException:
            return False
        return response.status_code == 200

    @staticmethod
    def _http_ok(url: str) -> bool:
        try:
            return requests.get(url, timeout=2, proxies={"http": "", "https": ""}).ok
        except requests.RequestException:
            return False

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)}")

    def _wait(self, check, what: str, timeout: float) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if check():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{what} not ready after {timeout}s")
