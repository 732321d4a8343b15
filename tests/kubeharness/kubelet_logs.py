"""The kubelet's log endpoint, for the node agent: what `kubectl logs` and `pods/log` reach.

The apiserver serves `GET /api/v1/namespaces/<ns>/pods/<pod>/log` by dialling the pod's
node: https://<InternalIP>:<status.daemonEndpoints.kubeletEndpoint.Port>/containerLogs/
<ns>/<pod>/<container>, verifying the node's serving certificate against
`--kubelet-certificate-authority` (the test CA). This server answers that path from the
files the node agent writes each container's output to, honouring `tailLines` and
`limitBytes` as the kubelet does (the tail is chosen first, then cut to the byte limit).

Not played: client authentication of the apiserver (a kubelet checks it and authorizes
through SubjectAccessReview), `follow`, `previous`, `timestamps` and `sinceSeconds`.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from kubeharness.pki import KeyPair

LogPath = Callable[[str, str, str], Path]  # (namespace, pod, container) -> file


def select(text: bytes, tail_lines: int | None, limit_bytes: int | None) -> bytes:
    """The kubelet's order: the last `tail_lines` lines, then at most `limit_bytes` of them."""
    if tail_lines is not None:
        lines = text.splitlines(keepends=True)
        text = b"".join(lines[-tail_lines:]) if tail_lines > 0 else b""
    if limit_bytes is not None:
        text = text[:limit_bytes]
    return text


def _int(query: dict[str, list[str]], key: str) -> int | None:
    values = query.get(key)
    return int(values[0]) if values else None


class KubeletLogServer:
    """HTTPS on 127.0.0.1:<ephemeral port>, serving /containerLogs from `log_path` files."""

    def __init__(self, serving: KeyPair, log_path: LogPath) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                outer._answer(self)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._log_path = log_path
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(serving.cert), str(serving.key))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="kubelet-logs", daemon=True
        )

    def start(self) -> KubeletLogServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _answer(self, request: BaseHTTPRequestHandler) -> None:
        url = urlsplit(request.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        if len(parts) != 4 or parts[0] != "containerLogs":
            request.send_error(HTTPStatus.NOT_FOUND)
            return
        _, namespace, pod, container = parts
        path = self._log_path(namespace, pod, container)
        if not path.is_file():
            request.send_error(HTTPStatus.NOT_FOUND, f"container {container} is not known")
            return
        query = parse_qs(url.query)
        try:
            body = select(path.read_bytes(), _int(query, "tailLines"), _int(query, "limitBytes"))
        except ValueError:
            request.send_error(HTTPStatus.BAD_REQUEST, "tailLines and limitBytes are integers")
            return
        request.send_response(HTTPStatus.OK)
        request.send_header("Content-Type", "text/plain")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)
