"""Test S3: moto as a real HTTP server, and a fault-injecting proxy in front of it.

`MotoS3` runs moto's standalone server (werkzeug, threaded) on 127.0.0.1 with a
random port; boto3 talks to it over HTTP exactly as it would to MinIO or AWS.

`FaultProxy` is a small HTTP/1.1 proxy on 127.0.0.1 that forwards every request
to moto unchanged, records it (so tests count GETs server-side, independent of
the client), and on demand answers with 5xx errors or cuts a response off
mid-body — the failures a flaky object store or network produces, which moto
itself cannot.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TEST_REGION = "us-east-1"
# Distinctive fake credentials: tests assert they never leak into messages or logs.
TEST_ACCESS_KEY_ID = "AKIAFINETUNETESTKEY01"
TEST_SECRET_ACCESS_KEY = "finetune-test-secret/DO-NOT-LEAK+0123456789abcdef"

# Sub-resources that make a GET on a bucket/key something other than GetObject.
_NON_OBJECT_QUERY = {
    "list-type",
    "uploads",
    "uploadId",
    "location",
    "versioning",
    "acl",
    "tagging",
    "policy",
    "delimiter",
    "prefix",
}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]

    @property
    def bucket(self) -> str:
        return self.path.lstrip("/").split("/", 1)[0]

    @property
    def key(self) -> str:
        parts = self.path.lstrip("/").split("/", 1)
        return parts[1] if len(parts) > 1 else ""

    @property
    def is_get_object(self) -> bool:
        return self.method == "GET" and bool(self.key) and not (_NON_OBJECT_QUERY & set(self.query))

    @property
    def is_put_object(self) -> bool:
        return self.method == "PUT" and bool(self.key)


class MotoS3:
    """moto's S3 (and IAM) over HTTP on 127.0.0.1, for one test session."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.endpoint_url = ""

    def start(self) -> MotoS3:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()

    def client(self, service: str = "s3", endpoint_url: str | None = None, **kw: Any) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            service,
            endpoint_url=endpoint_url or self.endpoint_url,
            region_name=TEST_REGION,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
            **kw,
        )

    @contextlib.contextmanager
    def enforce_auth(self) -> Iterator[None]:
        """Make moto check credentials and IAM policies (off by default), then turn it off again."""
        self._reset_auth("0")
        try:
            yield
        finally:
            self._reset_auth("inf")

    def _reset_auth(self, value: str) -> None:
        req = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/reset-auth",
            data=value.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},  # not a form: moto reads the raw body
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            json.loads(resp.read())


@dataclass
class Fault:
    """Apply to the next `times` requests that `match`: answer `status`, or cut the body."""

    match: Callable[[Request], bool]
    times: int
    status: int | None = None  # e.g. 500, 503
    code: str = "ServiceUnavailable"
    cut_after: float | None = None  # fraction of the body sent before closing the socket
    corrupt: bool = False  # flip one byte of the body (bit rot / a broken middlebox)
    hits: int = field(default=0)


class FaultProxy:
    """Forwarding proxy to `upstream` that records requests and injects faults."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                proxy._handle(self)

            do_PUT = do_POST = do_HEAD = do_DELETE = do_GET  # noqa: N815

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- test API --

    def fail(
        self,
        times: int,
        status: int = 503,
        code: str = "ServiceUnavailable",
        match: Callable[[Request], bool] = lambda r: True,
    ) -> Fault:
        fault = Fault(match=match, times=times, status=status, code=code)
        with self._lock:
            self.faults.append(fault)
        return fault

    def cut(
        self,
        times: int,
        after: float = 0.5,
        match: Callable[[Request], bool] = lambda r: r.is_get_object,
    ) -> Fault:
        fault = Fault(match=match, times=times, cut_after=after)
        with self._lock:
            self.faults.append(fault)
        return fault

    def corrupt(
        self, times: int, match: Callable[[Request], bool] = lambda r: r.is_get_object
    ) -> Fault:
        fault = Fault(match=match, times=times, corrupt=True)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.requests.clear()

    def count(self, pred: Callable[[Request], bool]) -> int:
        with self._lock:
            return sum(1 for r in self.requests if pred(r))

    def get_objects(self, key: str | None = None) -> int:
        return self.count(lambda r: r.is_get_object and (key is None or r.key == key))

    # -- internals --

    def _take_fault(self, req: Request) -> Fault | None:
        with self._lock:
            self.requests.append(req)
            for fault in self.faults:
                if fault.hits < fault.times and fault.match(req):
                    fault.hits += 1
                    return fault
        return None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = self._read_body(h)
        parts = urlsplit(h.path)
        headers = {k: v for k, v in h.headers.items()}
        req = Request(h.command, parts.path, parse_qs(parts.query, keep_blank_values=True), headers)
        fault = self._take_fault(req)
        if fault is not None and fault.status is not None:
            payload = (
                f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault.code}</Code>'
                f"<Message>injected fault</Message></Error>"
            ).encode()
            h.send_response(fault.status)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(payload)
            return

        conn = http.client.HTTPConnection(*self._upstream, timeout=30)
        try:
            fwd = {
                k: v
                for k, v in h.headers.items()
                if k.lower() not in ("transfer-encoding", "content-length", "connection")
            }
            if body or h.command in ("PUT", "POST"):
                fwd["Content-Length"] = str(len(body))
            conn.request(h.command, h.path, body=body or None, headers=fwd)
            resp = conn.getresponse()
            data = resp.read()
            out_headers = [
                (k, v)
                for k, v in resp.getheaders()
                if k.lower() not in ("transfer-encoding", "connection", "content-length")
            ]
        finally:
            conn.close()

        h.send_response(resp.status, resp.reason)
        for k, v in out_headers:
            h.send_header(k, v)
        length = resp.getheader("Content-Length") if h.command == "HEAD" else str(len(data))
        if length is not None:
            h.send_header("Content-Length", length)
        h.end_headers()
        if h.command == "HEAD":
            return
        if fault is not None and fault.corrupt and data:
            mid = len(data) // 2
            data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :]
        if fault is not None and fault.cut_after is not None and data:
            # Promise the whole body, deliver part of it, then drop the connection.
            h.wfile.write(data[: max(1, int(len(data) * fault.cut_after))])
            h.wfile.flush()
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return
        h.wfile.write(data)

    @staticmethod
    def _read_body(h: BaseHTTPRequestHandler) -> bytes:
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(h.rfile.read(size))
                h.rfile.readline()
        length = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(length) if length else b""
