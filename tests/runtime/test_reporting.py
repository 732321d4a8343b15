"""ProgressReporter arithmetic (fake clock) and the rank-0 progress server over real HTTP."""

from __future__ import annotations

import json
import math
import socket
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from finetune_runtime.progress.document import ProgressDocument
from finetune_runtime.progress.reporting import ProgressReporter
from finetune_runtime.progress.server import PORT_ENV, ProgressServer


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeNow:
    def __init__(self) -> None:
        self.t = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.t


def make(total: int = 100, **kw: object) -> tuple[ProgressReporter, FakeClock]:
    clock = FakeClock()
    return ProgressReporter(total, clock=clock, now=FakeNow(), **kw), clock  # type: ignore[arg-type]


def step(r: ProgressReporter, n: int, *, tokens: int = 1000, loss: float = 1.0) -> None:
    r.on_step(n, epoch=n / 50, loss=loss, learning_rate=1e-4, tokens=tokens)


def sample(r: ProgressReporter, name: str) -> float | None:
    return r.registry.get_sample_value(name)


def test_initial_document_is_starting_with_unknown_rates() -> None:
    r, _ = make(200, world_size=4)
    doc = r.document()
    assert doc.state == "starting"
    assert (doc.step, doc.total_steps, doc.world_size, doc.progress) == (0, 200, 4, 0.0)
    assert doc.tokens_per_second is None and doc.eta_seconds is None and doc.loss is None
    assert sample(r, "finetune_total_steps") == 200
    assert math.isnan(sample(r, "finetune_train_loss") or 0.0)
    assert r.registry.get_sample_value("finetune_state", {"finetune_state": "starting"}) == 1


def test_steady_rate_gives_tokens_per_second_eta_and_percent() -> None:
    r, clock = make(100)
    r.set_state("training")
    for n in range(1, 11):
        clock.advance(2.0)
        step(r, n, tokens=1000)
    doc = r.document()
    assert doc.state == "training"
    assert doc.step == 10
    assert doc.progress == pytest.approx(10.0)
    assert doc.tokens_per_second == pytest.approx(500.0)
    assert doc.eta_seconds == pytest.approx(90 * 2.0)
    assert doc.epoch == pytest.approx(0.2)
    assert sample(r, "finetune_tokens_total") == 10_000
    assert sample(r, "finetune_progress_ratio") == pytest.approx(0.1)
    assert sample(r, "finetune_tokens_per_second") == pytest.approx(500.0)
    assert sample(r, "finetune_step") == 10
    assert sample(r, "finetune_epoch") == pytest.approx(0.2)
    assert sample(r, "finetune_learning_rate") == pytest.approx(1e-4)
    assert sample(r, "finetune_eta_seconds") == pytest.approx(180.0)


def test_first_step_measures_from_training_start_not_construction() -> None:
    r, clock = make(10)
    clock.advance(100.0)  # model loading: must not count as step time
    r.set_state("training")
    clock.advance(4.0)
    step(r, 1, tokens=800)
    doc = r.document()
    assert doc.tokens_per_second == pytest.approx(200.0)
    assert doc.eta_seconds == pytest.approx(9 * 4.0)


def test_rate_is_smoothed_over_a_recent_window_only() -> None:
    r, clock = make(1000, window=5)
    r.set_state("training")
    for n in range(1, 21):  # slow phase: 10 s/step
        clock.advance(10.0)
        step(r, n, tokens=100)
    assert r.document().tokens_per_second == pytest.approx(10.0)
    for n in range(21, 24):  # 3 fast steps: window mixes both phases
        clock.advance(1.0)
        step(r, n, tokens=100)
    mixed = r.document().tokens_per_second
    assert mixed is not None and 10.0 < mixed < 100.0
    # one slow outlier step does not dominate a window of fast steps
    for n in range(24, 40):
        clock.advance(1.0)
        step(r, n, tokens=100)
    clock.advance(3.0)
    step(r, 40, tokens=100)
    doc = r.document()
    assert doc.tokens_per_second == pytest.approx(500 / 7.0)
    assert doc.eta_seconds == pytest.approx(960 * 7.0 / 5)


def test_resume_at_a_later_step_measures_only_new_steps() -> None:
    r, clock = make(1000)
    r.set_state("training")
    clock.advance(5.0)
    step(r, 501, tokens=50)  # resumed from checkpoint-500
    doc = r.document()
    assert doc.progress == pytest.approx(50.1)
    assert doc.tokens_per_second == pytest.approx(10.0)
    assert doc.eta_seconds == pytest.approx(499 * 5.0)


def test_steps_going_backwards_reset_the_window() -> None:
    r, clock = make(100)
    r.set_state("training")
    for n in range(1, 6):
        clock.advance(1.0)
        step(r, n, tokens=10)
    clock.advance(50.0)
    step(r, 3, tokens=10)  # a new attempt restarted from an older checkpoint
    clock.advance(2.0)
    step(r, 4, tokens=10)
    doc = r.document()
    assert doc.step == 4
    assert doc.tokens_per_second == pytest.approx(5.0)
    assert sample(r, "finetune_tokens_total") == 70


def test_set_total_steps_recomputes_percent_and_eta() -> None:
    r, clock = make(0)
    r.set_state("training")
    clock.advance(1.0)
    step(r, 1)
    clock.advance(1.0)
    step(r, 2)
    assert r.document().progress == 0.0 and r.document().eta_seconds is None
    r.set_total_steps(8)
    doc = r.document()
    assert doc.progress == pytest.approx(25.0)
    assert doc.eta_seconds == pytest.approx(6.0)
    assert sample(r, "finetune_total_steps") == 8
    with pytest.raises(ValueError, match="total_steps"):
        r.set_total_steps(-1)


def test_eval_checkpoint_and_completion() -> None:
    now = FakeNow()
    clock = FakeClock()
    r = ProgressReporter(4, clock=clock, now=now)
    r.set_state("training")
    for n in (1, 2):
        clock.advance(1.0)
        step(r, n, loss=2.5)
    r.set_state("evaluating")
    r.on_eval(2, 2.25)
    now.t += timedelta(seconds=30)
    r.set_state("saving")
    r.on_checkpoint(2, "/checkpoints/checkpoint-2")
    r.on_checkpoint(4, "/checkpoints/checkpoint-4")
    r.set_state("completed", "done")
    doc = r.document()
    assert doc.eval_loss == pytest.approx(2.25)
    assert doc.loss == pytest.approx(2.5)
    assert doc.last_checkpoint is not None
    assert doc.last_checkpoint.step == 4
    assert doc.last_checkpoint.path == "/checkpoints/checkpoint-4"
    assert doc.last_checkpoint.time == now.t
    assert doc.updated_at == now.t
    assert (doc.state, doc.message, doc.eta_seconds) == ("completed", "done", 0.0)
    assert sample(r, "finetune_checkpoints_total") == 2
    assert sample(r, "finetune_last_checkpoint_step") == 4
    assert sample(r, "finetune_eval_loss") == pytest.approx(2.25)
    assert r.registry.get_sample_value("finetune_state", {"finetune_state": "completed"}) == 1
    assert r.registry.get_sample_value("finetune_state", {"finetune_state": "training"}) == 0


def test_invalid_inputs_are_rejected() -> None:
    r, _ = make()
    with pytest.raises(ValueError, match="unknown training state 'running'"):
        r.set_state("running")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tokens"):
        r.on_step(1, epoch=0.0, loss=1.0, learning_rate=1e-4, tokens=-5)


def test_non_finite_loss_never_reaches_the_json_document() -> None:
    r, clock = make()
    clock.advance(1.0)
    r.on_step(1, epoch=0.0, loss=float("nan"), learning_rate=float("inf"), tokens=1)
    wire = r.document().to_json_dict()
    assert "loss" not in wire and "learningRate" not in wire
    json.dumps(wire, allow_nan=False)
    assert math.isnan(sample(r, "finetune_train_loss") or 0.0)


def test_document_is_a_snapshot_and_updates_are_thread_safe() -> None:
    r, clock = make(10_000)
    snapshot = r.document()
    errors: list[BaseException] = []
    counter = iter(range(1, 10_000))
    lock = threading.Lock()

    def writer() -> None:
        try:
            for _ in range(500):
                with lock:
                    n = next(counter)
                clock.advance(0.001)
                r.on_step(n, epoch=0.1, loss=1.0, learning_rate=1e-4, tokens=3)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(300):
                ProgressDocument.model_validate(r.document().to_json_dict())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(3)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert snapshot.step == 0  # earlier snapshots are unaffected
    assert r.tokens_total == 3 * 1500
    assert sample(r, "finetune_tokens_total") == 3 * 1500


@settings(max_examples=60, deadline=None)
@given(
    total=st.integers(min_value=0, max_value=500),
    steps=st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=100.0),  # seconds the step took
            st.integers(min_value=0, max_value=10_000),  # tokens
            st.integers(min_value=-3, max_value=3),  # step increment (<= 0: a restart)
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_any_step_sequence_yields_a_sane_document(
    total: int, steps: list[tuple[float, int, int]]
) -> None:
    r, clock = make(total, window=5)
    r.set_state("training")
    n, tokens_sum = 0, 0
    for seconds, tokens, inc in steps:
        clock.advance(seconds)
        n = max(1, n + inc)
        tokens_sum += tokens
        r.on_step(n, epoch=0.5, loss=1.0, learning_rate=1e-4, tokens=tokens)
        doc = r.document()
        assert 0.0 <= doc.progress <= 100.0
        assert doc.eta_seconds is None or doc.eta_seconds >= 0.0
        assert doc.tokens_per_second is None or doc.tokens_per_second >= 0.0
        json.dumps(doc.to_json_dict(), allow_nan=False)
    assert r.tokens_total == tokens_sum
    assert sample(r, "finetune_tokens_total") == tokens_sum


def test_reporters_use_private_registries() -> None:
    a, _ = make()
    b, _ = make()
    step(a, 1, tokens=7)
    assert sample(a, "finetune_tokens_total") == 7
    assert sample(b, "finetune_tokens_total") == 0
    assert REGISTRY.get_sample_value("finetune_tokens_total") is None


# -- the HTTP server -------------------------------------------------------------


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.headers["Content-Type"], resp.read().decode()


@pytest.fixture
def served() -> object:
    r, clock = make(50, world_size=2)
    r.set_state("training")
    for n in (1, 2, 3):
        clock.advance(0.5)
        step(r, n, tokens=256, loss=3.0 - n / 10)
    r.on_checkpoint(3, "/ckpt/checkpoint-3")
    with ProgressServer(r, host="127.0.0.1", port=0) as server:
        yield r, server


def test_progress_endpoint_round_trips_into_progress_document(served: object) -> None:
    reporter, server = served  # type: ignore[misc]
    assert server.port != 0
    status, ctype, body = get(f"{server.url}/progress")
    assert status == 200 and ctype == "application/json"
    doc = ProgressDocument.model_validate(json.loads(body))
    expected = reporter.document()
    assert doc == expected
    assert json.loads(body)["totalSteps"] == 50  # camelCase wire form
    assert doc.last_checkpoint is not None and doc.last_checkpoint.step == 3


def test_metrics_endpoint_is_prometheus_text(served: object) -> None:
    reporter, server = served  # type: ignore[misc]
    status, ctype, body = get(f"{server.url}/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
        if not s.labels
    }
    assert samples["finetune_step"] == 3
    assert samples["finetune_total_steps"] == 50
    assert samples["finetune_tokens_total"] == 768
    assert samples["finetune_train_loss"] == pytest.approx(2.7)
    assert samples["finetune_tokens_per_second"] == pytest.approx(512.0)
    assert samples["finetune_progress_ratio"] == pytest.approx(0.06)
    assert samples["finetune_checkpoints_total"] == 1
    assert samples["finetune_last_checkpoint_step"] == 3
    assert samples["finetune_world_size"] == 2
    for name in ("finetune_eval_loss", "finetune_learning_rate", "finetune_epoch"):
        assert name in samples
    # live: a later step shows up in the next scrape
    reporter.on_step(4, epoch=0.1, loss=2.0, learning_rate=1e-4, tokens=1)
    assert "finetune_step 4.0" in get(f"{server.url}/metrics")[2]


def test_metrics_endpoint_negotiates_openmetrics(served: object) -> None:
    _, server = served  # type: ignore[misc]
    _, ctype, body = get(
        f"{server.url}/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert ctype.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


def test_healthz_and_unknown_paths(served: object) -> None:
    _, server = served  # type: ignore[misc]
    assert get(f"{server.url}/healthz")[:1] == (200,)
    assert get(f"{server.url}/progress?verbose=1")[0] == 200
    with pytest.raises(urllib.error.HTTPError) as err:
        get(f"{server.url}/nope")
    assert err.value.code == 404
    head = urllib.request.Request(f"{server.url}/progress", method="HEAD")
    with urllib.request.urlopen(head, timeout=10) as resp:
        assert resp.status == 200 and resp.read() == b""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_port_comes_from_env_and_stop_closes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    port = _free_port()
    monkeypatch.setenv(PORT_ENV, str(port))
    r, _ = make()
    server = ProgressServer(r, host="127.0.0.1")
    assert server.port == port
    with server:
        assert server.port == port
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    with pytest.raises(urllib.error.URLError):
        get(f"http://127.0.0.1:{port}/healthz")


def test_bad_port_env_and_busy_port_give_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    r, _ = make()
    monkeypatch.setenv(PORT_ENV, "http")
    with pytest.raises(ValueError, match=f"{PORT_ENV}='http' is not a port number"):
        ProgressServer(r)
    monkeypatch.delenv(PORT_ENV)
    with (
        ProgressServer(r, host="127.0.0.1", port=0) as first,
        pytest.raises(OSError, match=f"set {PORT_ENV} to a free port"),
    ):
        ProgressServer(r, host="127.0.0.1", port=first.port).start()
