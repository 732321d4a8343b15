"""Rank 0's progress endpoint: `/progress` (JSON), `/metrics` (Prometheus), `/healthz`.

A stdlib threaded HTTP server in a daemon thread, so it never blocks training and
never keeps a finished process alive. The operator polls `/progress`; Prometheus
scrapes `/metrics`. Only rank 0 starts one (the trainer decides).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

from prometheus_client.exposition import choose_encoder

from finetune_runtime.contract import (
    ENV_PROGRESS_PORT,
    HEALTH_PATH,
    METRICS_PATH,
    PROGRESS_PATH,
    PROGRESS_PORT,
)
from finetune_runtime.progress.reporting import ProgressReporter

PORT_ENV = ENV_PROGRESS_PORT
# A connection that sends nothing for this long is closed: an idle keep-alive (or a
# client that never sends its request) must not hold a server thread forever.
IDLE_TIMEOUT_S = 30.0

log = logging.getLogger(__name__)


def port_from_env() -> int:
    """`$FINETUNE_PROGRESS_PORT`, else the contract's default port."""
    raw = os.environ.get(PORT_ENV, "").strip()
    if not raw:
        return PROGRESS_PORT
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"{PORT_ENV}={raw!r} is not a port number (0-65535)") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{PORT_ENV}={raw!r} is not a port number (0-65535)")
    return port


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "finetune-progress"
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        # A socket timeout: a read that waits longer fails, the handler thread ends.
        self.request.settimeout(self.server.idle_timeout)
        super().setup()

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._respond(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._respond(send_body=False)

    def _respond(self, *, send_body: bool) -> None:
        path = urlsplit(self.path).path
        reporter = self.server.reporter
        try:
            if path == PROGRESS_PATH:
                body = json.dumps(reporter.document().to_json_dict()).encode()
                content_type = "application/json"
            elif path == METRICS_PATH:
                encoder, content_type = choose_encoder(self.headers.get("Accept") or "")
                body = encoder(reporter.registry)
            elif path == HEALTH_PATH:
                body, content_type = b"ok\n", "text/plain; charset=utf-8"
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain", send_body)
                return
        except Exception:
            log.exception("progress endpoint %s failed", path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"error\n", "text/plain", send_body)
            return
        self._send(HTTPStatus.OK, body, content_type, send_body)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, send_body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("%s " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], reporter: ProgressReporter, idle_timeout: float
    ) -> None:
        self.reporter = reporter
        self.idle_timeout = idle_timeout
        super().__init__(address, _Handler)


class ProgressServer:
    """Serve a `ProgressReporter` over HTTP until `stop()`; usable as a context manager."""

    def __init__(
        self,
        reporter: ProgressReporter,
        host: str = "127.0.0.1",
        port: int | None = None,
        idle_timeout: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.reporter = reporter
        self.host = host
        self.idle_timeout = idle_timeout
        self._requested_port = port_from_env() if port is None else port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for); the requested one before start."""
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> ProgressServer:
        if self._server is not None:
            return self
        try:
            self._server = _Server(
                (self.host, self._requested_port), self.reporter, self.idle_timeout
            )
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot serve progress on {self.host}:{self._requested_port}: {exc.strerror}; "
                f"set {PORT_ENV} to a free port",
            ) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="finetune-progress-server",
            daemon=True,
        )
        self._thread.start()
        log.info("serving training progress on %s:%d", self.host, self.port)
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> ProgressServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
