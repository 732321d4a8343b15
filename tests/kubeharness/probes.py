"""Readiness probes as the kubelet runs them, for pods run as processes (see pod_run).

Only `readinessProbe.httpGet` is played: an HTTP GET of its path and port on the pod's IP
(or `host`), ready on 200-399. It runs every half second, not every `periodSeconds`, to keep
tests short; one failure makes the pod not ready again. Liveness and startup probes are not
run (a hung container is not restarted).
"""

from __future__ import annotations

import contextlib
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

PERIOD = 0.5


def readiness_url(container: dict[str, Any], ip: str) -> str | None:
    """The URL the readiness probe GETs, or None when the container has no httpGet probe."""
    get = (container.get("readinessProbe") or {}).get("httpGet")
    if not get:
        return None
    port = get["port"]
    if isinstance(port, str) and not port.isdigit():  # a named container port
        named = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        if port not in named:
            raise RuntimeError(f"readinessProbe port {port!r} is not a port of the container")
        port = named[port]
    scheme = str(get.get("scheme", "HTTP")).lower()
    return f"{scheme}://{get.get('host') or ip}:{int(port)}{get.get('path', '/')}"


def probe(url: str, timeout: float = 1.0) -> bool:
    """One probe: success is an HTTP status in 200-399, anything else (or no answer) fails."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with (
        contextlib.suppress(urllib.error.URLError, OSError),
        opener.open(url, timeout=timeout) as r,
    ):
        return 200 <= r.status < 400
    return False


def watch(url: str, running: Callable[[], bool], changed: Callable[[bool], None]) -> None:
    """Probe while `running()`; call `changed(ready)` on every transition."""
    ready = False
    stop = threading.Event()
    while running() and not stop.wait(PERIOD):
        now = probe(url)
        if now != ready and running():
            ready = now
            changed(ready)
