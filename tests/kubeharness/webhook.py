"""A validating admission webhook served by the test, for reacting to a request at the exact
moment the apiserver admits it (e.g. SIGKILL the operator while its pod POST is in flight).

Real apiserver machinery: a ValidatingWebhookConfiguration scoped to one namespace and
resource calls this HTTPS server (certificate from the test CA) with an AdmissionReview; the
hook runs, and the request is allowed, so the object is stored although its sender may be
dead before the answer arrives.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kubeharness.cluster import Cluster, wait_for
from kubeharness.control_plane import ControlPlane

PROBE_PREFIX = "webhook-probe-"
# Pods are always watched too (dry-run pod creations probe that the webhook is active).
_PROBE_RULE = {
    "apiGroups": [""],
    "apiVersions": ["v1"],
    "operations": ["CREATE"],
    "resources": ["pods"],
}
CONFIGS = "apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"


class AdmissionTrap:
    """Call `hook(request)` on each admitted request for `resource` in `namespace` (probes
    aside): by default a CREATE of a core/v1 pod."""

    def __init__(
        self,
        plane: ControlPlane,
        cluster: Cluster,
        namespace: str,
        hook: Callable[[dict[str, Any]], None],
        resource: str = "pods",
        *,
        group: str = "",
        version: str = "v1",
        operations: tuple[str, ...] = ("CREATE",),
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.resource = resource
        self.rule = {
            "apiGroups": [group],
            "apiVersions": [version],
            "operations": list(operations),
            "resources": [resource],
        }
        self.hook = hook
        self.name = f"trap-{namespace}-{resource.replace('/', '-')}"
        self.seen_probe = threading.Event()
        self.calls = 0
        trap = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                request = review["request"]
                if request.get("name", "").startswith(PROBE_PREFIX) or (
                    request.get("object", {}).get("metadata", {}).get("name", "")
                ).startswith(PROBE_PREFIX):
                    trap.seen_probe.set()
                elif trap.matches(request):
                    trap.calls += 1
                    trap.hook(request)
                body = json.dumps(
                    {
                        "apiVersion": "admission.k8s.io/v1",
                        "kind": "AdmissionReview",
                        "response": {"uid": request["uid"], "allowed": True},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        serving = plane.pki.serving(f"webhook-{namespace}")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(serving.cert, serving.key)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.ca_bundle = plane.pki.ca.read_bytes()

    def matches(self, request: dict[str, Any]) -> bool:
        resource = request["resource"]["resource"]
        if request.get("subResource"):
            resource += f"/{request['subResource']}"
        return resource == self.resource and request["operation"] in self.rule["operations"]

    def __enter__(self) -> AdmissionTrap:
        import base64

        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        port = self.server.server_address[1]
        config = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": self.name},
            "webhooks": [
                {
                    "name": "trap.finetune.dev",
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{port}/",
                        "caBundle": base64.b64encode(self.ca_bundle).decode(),
                    },
                    "rules": [self.rule] + ([_PROBE_RULE] if self.rule != _PROBE_RULE else []),
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": self.namespace}
                    },
                    "sideEffects": "NoneOnDryRun",
                    "admissionReviewVersions": ["v1"],
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 10,
                }
            ],
        }
        self.cluster.post(CONFIGS, config)
        self._wait_active()
        return self

    def _wait_active(self) -> None:
        """Dry-run probes until the apiserver calls us: its webhook informer has caught up."""
        probe = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{PROBE_PREFIX}1"},
            "spec": {"containers": [{"name": "c", "image": "probe"}]},
        }

        def called() -> bool:
            self.cluster.post(f"api/v1/namespaces/{self.namespace}/pods", probe, dryRun="All")
            return self.seen_probe.is_set()

        wait_for(called, 30, interval=0.3, what="the admission webhook active")

    def __exit__(self, *exc: object) -> None:
        self.cluster.delete(f"{CONFIGS}/{self.name}")
        time.sleep(0.5)
        self.server.shutdown()
