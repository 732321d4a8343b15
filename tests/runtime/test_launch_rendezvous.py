"""The wait-for-master gate, with real sockets on 127.0.0.1 (the listener starts late)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import pytest

from finetune_runtime.cli import main
from finetune_runtime.errors import LaunchError
from finetune_runtime.launch.rendezvous import Probe, probe, resolves, wait_for_master

VALID_CONFIG = "base_model: builtin:tiny-llama\ndatasets: [{path: data.jsonl}]\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LateListener:
    """Starts listening on `port` once the gate has probed it `after_probes` times."""

    def __init__(self, port: int, after_probes: int) -> None:
        self.port = port
        self.after_probes = after_probes
        self.probes = 0
        self.sock: socket.socket | None = None
        self.accepted = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def counting_probe(self, host: str, port: int) -> Probe:
        self.probes += 1
        if self.probes == self.after_probes:
            self.start()
        return probe(host, port)

    def start(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen()
        self.sock = sock
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        assert self.sock is not None
        self.sock.settimeout(0.05)
        while True:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                if self._stop.is_set():  # nothing queued any more
                    return
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        """Stop after accepting what is already queued, then close the port."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.sock is not None:
            self.sock.close()


def test_probe_reports_connection_refused_then_ready() -> None:
    port = free_port()
    refused = probe("127.0.0.1", port)
    assert not refused.ok and refused.stage == "connect"
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
        assert probe("127.0.0.1", port) == Probe(True, "ready")


def test_probe_reports_an_unresolvable_name() -> None:
    result = probe("no-such-master.invalid", 29500)
    assert not result.ok and result.stage == "dns"
    assert "no-such-master.invalid" in result.detail


def test_gate_waits_until_a_late_listener_accepts(caplog: pytest.LogCaptureFixture) -> None:
    listener = LateListener(free_port(), after_probes=3)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    try:
        with caplog.at_level(logging.INFO, logger="finetune_runtime.launch.rendezvous"):
            attempts = wait_for_master(
                "127.0.0.1",
                listener.port,
                timeout=60,
                initial_delay=0.01,
                max_delay=0.05,
                probe_fn=listener.counting_probe,
                sleep=sleep,
            )
    finally:
        listener.close()
    # Attempts 1 and 2 are refused; the listener opens just before attempt 3 probes.
    assert attempts == 3
    assert listener.accepted == 1
    assert sleeps == [0.01, 0.02]  # exponential backoff between the refused attempts
    assert any("waiting for master 127.0.0.1" in r.getMessage() for r in caplog.records)
    assert any("reachable after 3 attempts" in r.getMessage() for r in caplog.records)


def test_gate_with_a_listener_started_by_another_thread_later() -> None:
    """No hook into the gate: a thread opens the port after a pause, as node 0 would."""
    port = free_port()
    listener = LateListener(port, after_probes=0)
    timer = threading.Timer(0.3, listener.start)
    timer.start()
    try:
        attempts = wait_for_master("127.0.0.1", port, timeout=60, initial_delay=0.05)
    finally:
        timer.join()
        listener.close()
    assert attempts > 1
    assert listener.accepted == 1


def test_backoff_is_capped() -> None:
    sleeps: list[float] = []
    clock = iter(range(0, 10_000))
    with pytest.raises(LaunchError):
        wait_for_master(
            "127.0.0.1",
            1,
            timeout=20,
            initial_delay=1,
            max_delay=4,
            probe_fn=lambda h, p: Probe(False, "connect", "refused"),
            clock=lambda: float(next(clock)),
            sleep=sleeps.append,
        )
    assert sleeps[:5] == [1, 2, 4, 4, 4]


def test_gate_times_out_with_a_clear_error() -> None:
    port = free_port()
    with pytest.raises(LaunchError) as info:
        wait_for_master("127.0.0.1", port, timeout=0.3, initial_delay=0.05, max_delay=0.1)
    message = str(info.value)
    assert f"master 127.0.0.1:{port} not reachable after 0.3s" in message
    assert "PET_MASTER_ADDR" in message


def test_gate_times_out_on_a_name_that_never_resolves() -> None:
    with pytest.raises(LaunchError, match="does not resolve"):
        wait_for_master("job-worker-0.job.invalid", 29500, timeout=0.2, initial_delay=0.05)


def test_timeout_must_be_positive() -> None:
    with pytest.raises(LaunchError, match="must be positive"):
        wait_for_master("127.0.0.1", 1, timeout=0)


def test_node_zero_only_needs_its_own_name_to_resolve() -> None:
    port = free_port()  # nothing listens: node 0 is the one about to listen
    assert wait_for_master("127.0.0.1", port, timeout=5, probe_fn=resolves) == 1
    assert not resolves("job-worker-0.job.invalid", port).ok


# --------------------------------------------------------------------------- via the CLI


def _launch_cli(tmp_path: Path, *flags: str) -> int:
    config = tmp_path / "c.yaml"
    config.write_text(VALID_CONFIG)
    return main(["launch", "--config", str(config), "--rendezvous-timeout", "0.3", *flags])


def test_cli_worker_gives_up_when_the_master_never_listens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = str(free_port())
    flags = ("--nnodes", "2", "--node-rank", "1", "--master-addr", "127.0.0.1")
    code = _launch_cli(tmp_path, *flags, "--master-port", port, "--nproc-per-node", "1")
    assert code == LaunchError.exit_code
    assert f"master 127.0.0.1:{port} not reachable after 0.3s" in capsys.readouterr().err


def test_cli_node_zero_gives_up_when_its_name_never_resolves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ("--nnodes", "2", "--node-rank", "0", "--master-addr", "w0.job.invalid")
    assert _launch_cli(tmp_path, *flags, "--nproc-per-node", "1") == LaunchError.exit_code
    assert "'w0.job.invalid' does not resolve yet" in capsys.readouterr().err
