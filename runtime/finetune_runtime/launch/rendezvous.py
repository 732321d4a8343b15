"""Wait-for-master gate: node ranks > 0 hold off until node 0 can be reached.

In a gang of pods, workers often start before the master: its DNS record (a
headless Service entry) may not exist yet and torchrun on node 0 may not yet
listen. Starting torchrun early would fail (or burn its rendezvous timeout)
and make the pod crash-loop; instead each worker polls, with capped exponential
backoff, until the master's name resolves and its port accepts a TCP
connection, and gives up with a LaunchError after `timeout` seconds. Node 0
itself waits only for its own name to resolve (`resolves`): torchrun connects to
the master address even on the master, and a headless Service's record can lag
behind the pod by a few seconds.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from finetune_runtime import contract
from finetune_runtime.errors import LaunchError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Probe:
    """One attempt's outcome: `ok`, or which stage failed and why."""

    ok: bool
    stage: str  # "dns" | "connect" | "ready"
    detail: str = ""


def resolves(host: str, port: int) -> Probe:
    """Only the DNS stage: node 0 checks its own name before it listens on it."""
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return Probe(False, "dns", f"{host!r} does not resolve yet ({exc.strerror or exc})")
    return Probe(True, "ready")


def probe(host: str, port: int, connect_timeout: float = 2.0) -> Probe:
    """Resolve `host` and try a TCP connection to `port` on each of its addresses."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return Probe(False, "dns", f"{host!r} does not resolve yet ({exc.strerror or exc})")
    errors: list[str] = []
    for family, socktype, proto, _name, address in infos:
        where = f"{host}:{port} ({family.name})"
        try:
            with socket.socket(family, socktype, proto) as sock:
                sock.settimeout(connect_timeout)
                sock.connect(address)
            return Probe(True, "ready")
        except OSError as exc:
            errors.append(f"{where}: {exc.strerror or exc}")
    return Probe(False, "connect", "; ".join(errors) or "no addresses")


def wait_for_master(
    host: str,
    port: int,
    timeout: float = DEFAULT_TIMEOUT_S,
    *,
    initial_delay: float = 0.25,
    max_delay: float = 5.0,
    probe_fn: Callable[[str, int], Probe] = probe,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Block until `host:port` accepts TCP; return the number of attempts it took.

    Raises LaunchError when `timeout` seconds pass first, naming the last failure.
    """
    if timeout <= 0:
        raise LaunchError(f"rendezvous timeout must be positive, got {timeout}")
    start = clock()
    deadline = start + timeout
    delay = initial_delay
    attempts = 0
    last_stage = ""
    while True:
        attempts += 1
        result = probe_fn(host, port)
        if result.ok:
            if attempts > 1:
                log.info(
                    "master %s:%d is reachable after %d attempts (%.1fs)",
                    host,
                    port,
                    attempts,
                    clock() - start,
                )
            return attempts
        now = clock()
        if now >= deadline:
            raise LaunchError(
                f"master {host}:{port} not reachable after {timeout:g}s ({attempts} attempts): "
                f"{result.detail}. Check that node 0 is running and that the master address and "
                f"port ({contract.ENV_MASTER_ADDR} / {contract.ENV_MASTER_PORT}) point at it"
            )
        if result.stage != last_stage or attempts in (2, 5) or attempts % 10 == 0:
            log.info(
                "waiting for master %s:%d (attempt %d, %.0fs left): %s",
                host,
                port,
                attempts,
                deadline - now,
                result.detail,
            )
            last_stage = result.stage
        sleep(min(delay, max(deadline - now, 0.0)))
        delay = min(delay * 2, max_delay)
