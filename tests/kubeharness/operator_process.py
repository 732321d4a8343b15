"""The real operator as a cluster runs it: the chart's RBAC applied, a ServiceAccount token
from the TokenRequest API, and the `finetune-operator` console script as a subprocess.

The operator authenticates as `system:serviceaccount:<ns>:<sa>` with exactly the
(Cluster)Roles `helm template` renders, so a verb the chart forgets is a real 403.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from kubeharness import processes
from kubeharness.cluster import Cluster, wait_for
from kubeharness.control_plane import ROOT, free_port

CHART = ROOT / "charts" / "finetune-operator"
CRD = ROOT / "crds" / "finetunejob.yaml"
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def render_chart(
    helm: Path,
    namespace: str,
    values: dict[str, Any] | None = None,
    release: str = "finetune-operator",
) -> list[dict]:
    """`helm template` of the chart, as objects."""
    argv = [str(helm), "template", release, str(CHART), "--namespace", namespace]
    for key, value in (values or {}).items():
        argv += ["--set-json", f"{key}={json.dumps(value)}"]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def kubectl(kubectl_bin: Path, kubeconfig: Path, *args: str, stdin: str = "") -> str:
    result = subprocess.run(
        [str(kubectl_bin), f"--kubeconfig={kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_PROXY": "*", "no_proxy": "*"},
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def apply_crd(cluster: Cluster, kubectl_bin: Path) -> None:
    """The CRD, by kubectl server-side apply, then wait until it is Established."""
    kubectl(kubectl_bin, cluster.kubeconfig, "apply", "--server-side", "-f", str(CRD))
    name = yaml.safe_load(CRD.read_text())["metadata"]["name"]

    def established() -> bool:
        crd = cluster.get(f"apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        conditions = ((crd or {}).get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    wait_for(established, 60, what=f"CRD {name} Established")


@dataclass(frozen=True)
class Identity:
    namespace: str
    service_account: str

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


def install_chart_rbac(
    cluster: Cluster,
    helm: Path,
    kubectl_bin: Path,
    namespace: str,
    values: dict | None = None,
    release: str = "finetune-operator",
) -> tuple[Identity, list[dict]]:
    """Apply what the chart renders for RBAC (and its ServiceAccount); the operator's identity
    and everything rendered."""
    if cluster.get(f"api/v1/namespaces/{namespace}") is None:
        cluster.create_namespace(namespace)
    rendered = render_chart(helm, namespace, values, release)
    rbac = [doc for doc in rendered if doc["kind"] in RBAC_KINDS]
    kubectl(
        kubectl_bin,
        cluster.kubeconfig,
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "-",
        stdin=yaml.safe_dump_all(rbac),
    )
    deployment = next(doc for doc in rendered if doc["kind"] == "Deployment")
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    return Identity(namespace, account), rendered


def service_account_token(cluster: Cluster, identity: Identity, seconds: int = 86400) -> str:
    """A bound token for the ServiceAccount, from the TokenRequest API (as a kubelet gets it)."""
    path = (
        f"api/v1/namespaces/{identity.namespace}/serviceaccounts/{identity.service_account}/token"
    )
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest"}
    body["spec"] = {"expirationSeconds": seconds}
    return str(cluster.post(path, body)["status"]["token"])


class OperatorProcess:
    """The `finetune-operator` console script, authenticated by `kubeconfig`."""

    def __init__(
        self,
        kubeconfig: Path,
        workdir: Path,
        *,
        progress_port: int,
        resync_seconds: float = 1.0,
        args: list[str] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.progress_port = progress_port
        self.resync_seconds = resync_seconds
        self.scope_args = args if args is not None else ["--all-namespaces"]
        self.metrics_port = 0
        self.health_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "operator.log"
        self.starts = 0

    @staticmethod
    def executable() -> str:
        found = shutil.which("finetune-operator", path=str(Path(sys.executable).parent))
        if found is None:
            raise RuntimeError("finetune-operator is not installed in this virtualenv")
        return found

    def start(self) -> OperatorProcess:
        self.metrics_port, self.health_port = free_port(), free_port()
        self.starts += 1
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("KUBERNETES_", "FINETUNE_OPERATOR_"))
        }
        env |= {
            "KUBECONFIG": str(self.kubeconfig),
            "NO_PROXY": "*",
            "no_proxy": "*",
            "FINETUNE_OPERATOR_RESYNC_SECONDS": str(self.resync_seconds),
        }
        command = [
            self.executable(),
            *self.scope_args,
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
        ]
        with self.log_path.open("ab") as log:
            log.write(f"\n===== operator start #{self.starts} =====\n".encode())
        self.proc = processes.spawn(command, self.log_path, env)
        wait_for(self.healthy, timeout=90, interval=0.2, what="operator /healthz")
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
        return processes.tail(self.log_path, 10**9)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            processes.stop(self.proc, grace=0)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)
