"""Kueue (sigs.k8s.io/kueue) running against the test control plane: the real controller
manager, built by `make kube` (scripts/build-kueue.sh) from the module pinned in
kube/addons/kueue/go.mod, with the CRDs, webhook manifests and manager ClusterRole of that same
module's source (copied next to the binary by the build).

How it is wired, as its kustomize deployment would wire it, with loopback for the Service:
- identity: a client certificate (user `kueue-controller`) bound to the module's own
  `manager-role` ClusterRole, so RBAC is enforced as for the real Deployment;
- Configuration (config.kueue.x-k8s.io/v1beta2): only the `pod` framework, queue-name label
  required (`manageJobsWithoutQueueName: false`), a managedJobsNamespaceSelector matching the
  namespaces a test labels with `KUEUE_NAMESPACE_LABEL`, internal cert management off, the
  webhook server on a free loopback port with a serving certificate from the test CA;
- webhooks: the module's MutatingWebhookConfiguration / ValidatingWebhookConfiguration entries
  for pods and for Kueue's own kinds, `clientConfig.service` replaced by
  `url: https://127.0.0.1:<port><path>` and the test CA as caBundle. The pod webhooks are
  scoped to the labelled namespaces (upstream scopes them to "not kube-system/kueue-system"):
  one control plane serves the whole test session, and no other test's pods may depend on a
  Kueue that is only running for one module;
- the metrics certificate: with internal cert management off, v0.17.0's main.go reads
  /etc/kueue/metrics/certs/tls.{crt,key} (a hard-coded path where the Deployment mounts a
  Secret) and exits without them. Like a kubelet mounting that volume, the process is started
  in its own user+mount namespace (`unshare`) where an overlay adds those two files to /etc;
  the host's /etc is not touched.
"""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path
from typing import Any

import requests
import yaml

from kubeharness import processes
from kubeharness.api import ApiError
from kubeharness.cluster import Cluster, wait_for
from kubeharness.control_plane import ROOT, ControlPlane, free_port
from kubeharness.control_plane import kubeconfig as kubeconfig_for

MODULE = ROOT / "kube" / "addons" / "kueue" / "go.mod"
API = "kueue.x-k8s.io/v1beta2"
KUEUE_NAMESPACE_LABEL = "finetune.dev/kueue-test"
USER = "kueue-controller"
NAMESPACE = "kueue-system"
CRDS = "apis/apiextensions.k8s.io/v1/customresourcedefinitions"
WEBHOOKS = "apis/admissionregistration.k8s.io/v1"
# Webhooks of the frameworks enabled here (pods) and of Kueue's own kinds. The others in the
# module's manifests (Job, JobSet, Ray, ...) are served only when their framework is enabled.
POD_WEBHOOKS = ("mpod.kb.io", "vpod.kb.io")
KUEUE_KINDS = ("clusterqueue", "cohort", "resourceflavor", "workload")


def kueue_version() -> str:
    found = re.search(r"^require sigs.k8s.io/kueue (v[0-9.]+)$", MODULE.read_text(), re.M)
    if found is None:
        raise RuntimeError(f"{MODULE}: no `require sigs.k8s.io/kueue vX.Y.Z` line")
    return found.group(1)


def build_dir() -> Path:
    """.cache/kube/kueue/<version>/ with the binary and config/; a clear error when missing."""
    directory = ROOT / ".cache" / "kube" / "kueue" / kueue_version()
    if not (directory / "kueue").exists() or not (directory / "config" / "crds").is_dir():
        raise RuntimeError(f"Kueue is not built in {directory}: run `make kube` (needs Go 1.26+)")
    return directory


def webhook_configurations(manifests: str, url: str, ca: bytes) -> list[dict[str, Any]]:
    """The module's webhook configurations, reduced to pods + Kueue's kinds, pointed at `url`.

    Names get the `kueue-` prefix that the module's kustomization adds.
    """
    wanted = {*POD_WEBHOOKS}
    wanted |= {f"{p}{kind}.kb.io" for kind in KUEUE_KINDS for p in ("m", "v")}
    selector = {"matchLabels": {KUEUE_NAMESPACE_LABEL: "true"}}
    configs = []
    for doc in yaml.safe_load_all(manifests):
        if not doc:
            continue
        hooks = []
        for hook in doc["webhooks"]:
            if hook["name"] not in wanted:
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {
                "url": f"{url}{path}",
                "caBundle": base64.b64encode(ca).decode(),
            }
            if hook["name"] in POD_WEBHOOKS:
                hook["namespaceSelector"] = selector
            hooks.append(hook)
        doc["metadata"]["name"] = f"kueue-{doc['metadata']['name']}"
        configs.append({**doc, "webhooks": hooks})
    return configs


class Kueue:
    """The Kueue controller manager for one test module (`start`, then `stop`)."""

    def __init__(self, plane: ControlPlane, cluster: Cluster, workdir: Path) -> None:
        self.plane, self.cluster, self.workdir = plane, cluster, workdir
        self.dir = build_dir()
        self.log_path = workdir / "kueue.log"
        self.proc: Any = None
        self.webhook_names: list[tuple[str, str]] = []

    # ----------------------------------------------------------------------- lifecycle
    def start(self) -> Kueue:
        try:
            self._install_crds()
            self._ensure_namespace(NAMESPACE, {})
            self._install_rbac()
            port = free_port()
            self._spawn(port)
            self._register_webhooks(f"https://127.0.0.1:{port}")
            self._wait_gating()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Webhooks first (failurePolicy Fail must never outlive the server), then the process."""
        for kind, name in self.webhook_names:
            self.cluster.delete(f"{WEBHOOKS}/{kind}/{name}")
        self.webhook_names = []
        processes.stop(self.proc)
        self.proc = None

    def log(self) -> str:
        return processes.tail(self.log_path, 8000)

    def namespace(self, name: str) -> None:
        """Create a namespace whose pods Kueue manages (the managedJobsNamespaceSelector)."""
        self._ensure_namespace(name, {KUEUE_NAMESPACE_LABEL: "true"})

    # ------------------------------------------------------------------------ install
    def _install_crds(self) -> None:
        for path in sorted((self.dir / "config" / "crds").glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            if self.cluster.get(f"{CRDS}/{crd['metadata']['name']}") is None:
                self.cluster.post(CRDS, crd)
        for path in sorted((self.dir / "config" / "crds").glob("*.yaml")):
            name = yaml.safe_load(path.read_text())["metadata"]["name"]
            wait_for(lambda n=name: _established(self.cluster, n), 60, what=f"CRD {name}")

    def _install_rbac(self) -> None:
        """The module's manager ClusterRole and its Secrets Role in kueue-system, bound to our
        user as its kustomization binds them to the controller's ServiceAccount."""
        rbac = self.dir / "config" / "rbac"
        role = yaml.safe_load((rbac / "role.yaml").read_text())
        role["metadata"] = {"name": "kueue-manager-role"}
        secrets = yaml.safe_load((rbac / "manager_secrets_role.yaml").read_text())
        secrets["metadata"] = {"name": "kueue-manager-secrets-role", "namespace": NAMESPACE}
        api = "apis/rbac.authorization.k8s.io/v1"
        self._ensure(f"{api}/clusterroles", role)
        self._ensure(f"{api}/clusterrolebindings", _binding("ClusterRole", role))
        self._ensure(f"{api}/namespaces/{NAMESPACE}/roles", secrets)
        self._ensure(f"{api}/namespaces/{NAMESPACE}/rolebindings", _binding("Role", secrets))

    def _ensure(self, path: str, body: dict[str, Any]) -> None:
        if self.cluster.get(f"{path}/{body['metadata']['name']}") is None:
            self.cluster.post(path, body)

    def _ensure_namespace(self, name: str, labels: dict[str, str]) -> None:
        if self.cluster.get(f"api/v1/namespaces/{name}") is None:
            self.cluster.create_namespace(name, labels)

    # ------------------------------------------------------------------------ process
    def _configuration(self, port: int, certs: Path) -> dict[str, Any]:
        return {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "namespace": NAMESPACE,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
            "metrics": {"bindAddress": f"127.0.0.1:{free_port()}"},
            "webhook": {"host": "127.0.0.1", "port": port, "certDir": str(certs)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "manageJobsWithoutQueueName": False,
            "managedJobsNamespaceSelector": {"matchLabels": {KUEUE_NAMESPACE_LABEL: "true"}},
            "integrations": {"frameworks": ["pod"]},
        }

    def _spawn(self, port: int) -> None:
        pki = self.plane.pki
        certs = self.workdir / "webhook-certs"
        serving = pki.serving("kueue-webhook")
        certs.mkdir(parents=True, exist_ok=True)
        shutil.copy(serving.cert, certs / "tls.crt")
        shutil.copy(serving.key, certs / "tls.key")
        # What the Deployment mounts at /etc/kueue/metrics/certs, overlaid onto /etc below.
        etc = self.workdir / "etc"
        metrics = etc / "kueue" / "metrics" / "certs"
        metrics.mkdir(parents=True, exist_ok=True)
        shutil.copy(serving.cert, metrics / "tls.crt")
        shutil.copy(serving.key, metrics / "tls.key")

        client = pki.client(USER, USER)
        kubeconfig = self.workdir / "kueue.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(kubeconfig_for(self.plane.url, pki.ca, client=client)))
        self.health_port = free_port()
        config = self.workdir / "kueue-config.yaml"
        config.write_text(yaml.safe_dump(self._configuration(port, certs)))
        kueue = [
            str(self.dir / "kueue"),
            f"--config={config}",
            f"--kubeconfig={kubeconfig}",
            # The on-demand visibility API is an aggregated apiserver; not registered here.
            "--feature-gates=VisibilityOnDemand=false",
            f"--visibility-server-port={free_port()}",
            "--zap-log-level=3",
        ]
        mount = f"mount -t overlay overlay -o lowerdir={etc}:/etc /etc"
        argv = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c"]
        argv += [f'{mount} && exec "$@"', "kueue", *kueue]
        self.proc = processes.spawn(argv, self.log_path)
        wait_for(self._ready, 60, interval=0.3, what="Kueue /readyz")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"kueue exited with {self.proc.returncode}:\n{self.log()}")
        try:
            url = f"http://127.0.0.1:{self.health_port}/readyz"
            return requests.get(url, timeout=2, proxies={"http": "", "https": ""}).ok
        except requests.RequestException:
            return False

    # ----------------------------------------------------------------------- webhooks
    def _register_webhooks(self, url: str) -> None:
        manifests = (self.dir / "config" / "webhooks.yaml").read_text()
        for config in webhook_configurations(manifests, url, self.plane.pki.ca.read_bytes()):
            kind = config["kind"].lower() + "s"
            name = config["metadata"]["name"]
            if self.cluster.get(f"{WEBHOOKS}/{kind}/{name}") is not None:
                self.cluster.delete(f"{WEBHOOKS}/{kind}/{name}")
            self.cluster.post(f"{WEBHOOKS}/{kind}", config)
            self.webhook_names.append((kind, name))

    def _wait_gating(self) -> None:
        """Dry-run pods in a managed namespace until Kueue's webhook gates them: the
        apiserver's webhook informer has caught up, so no real pod slips through ungated."""
        probe_ns = "kueue-probe"
        self.namespace(probe_ns)
        probe = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "kueue-probe", "labels": {"kueue.x-k8s.io/queue-name": "probe"}},
            "spec": {"containers": [{"name": "c", "image": "probe"}]},
        }

        def gated() -> bool:
            pod = self.cluster.post(f"api/v1/namespaces/{probe_ns}/pods", probe, dryRun="All")
            return bool(pod["spec"].get("schedulingGates"))

        wait_for(gated, 30, interval=0.3, what="Kueue's pod webhook gating pods")


def _binding(kind: str, role: dict[str, Any]) -> dict[str, Any]:
    meta = {**role["metadata"], "name": role["metadata"]["name"] + "binding"}
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": f"{kind}Binding",
        "metadata": meta,
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": kind,
            "name": role["metadata"]["name"],
        },
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}],
    }


def _established(cluster: Cluster, name: str) -> bool:
    try:
        crd = cluster.get(f"{CRDS}/{name}") or {}
    except ApiError:
        return False
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)
