"""A live `finetune serve` app on loopback for the serving tests: real uvicorn, real sockets.

The server runs in a thread of the test process (so tests can look at its engine), bound
to 127.0.0.1 on a free port; clients (the official `openai` package, httpx) talk HTTP to it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import uvicorn

from finetune_runtime.serving.app import ServeOptions, ServerState, create_app
from finetune_runtime.serving.loading import LoadedModel, load, resolve_source

READY_TIMEOUT_S = 120.0


class LiveServer:
    def __init__(self, loader: Callable[[], LoadedModel], options: ServeOptions) -> None:
        self.state = ServerState(options)
        self.app = create_app(loader, self.state)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, log_level="warning", access_log=False)
        )
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> LiveServer:
        self.thread.start()
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.state.load_error is not None:
                raise self.state.load_error
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError("server did not become ready")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def serve(
    target: str | Path,
    adapters: list[str] | None = None,
    name: str | None = None,
    **options: object,
) -> LiveServer:
    source = resolve_source(str(target), adapters or [], name)
    return LiveServer(lambda: load(source), ServeOptions(**options)).start()  # type: ignore[arg-type]
