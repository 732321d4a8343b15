"""`finetune serve`: bad input, auth, capacity and client disconnects, over real HTTP."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import openai
import pytest
from serve_fixtures import Trained
from serve_helpers import LiveServer, serve

GOOD = {"model": "demo", "prompt": "hello", "max_tokens": 4}


@pytest.fixture(scope="module")
def server(trained_run: Trained) -> Any:
    live = serve(trained_run.merged, name="demo", max_batch=8, max_queue=64)
    yield live
    live.stop()


def post(server: LiveServer, path: str, body: Any, **kw: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server.url}{path}", content=content, timeout=60, **kw)


BAD_COMPLETIONS = [
    (b'{"model": "demo", "prompt": ', 400, "malformed JSON body"),
    (b"[1, 2]", 400, "must be a JSON object"),
    ({"prompt": "hi"}, 400, "model: required"),
    ({**GOOD, "model": "nope"}, 404, "'nope' is not served here"),
    ({**GOOD, "model": "../../../etc/passwd"}, 404, "is not served here"),
    ({**GOOD, "model": "/etc/passwd"}, 404, "is not served here"),
    ({**GOOD, "max_tokens": -1}, 400, "max_tokens: Input should be greater than or equal to 1"),
    ({**GOOD, "max_tokens": 0}, 400, "max_tokens"),
    ({**GOOD, "max_tokens": 10**6}, 400, "exceeds this model's context of 512 tokens"),
    ({**GOOD, "temperature": 2.5}, 400, "temperature: Input should be less than or equal to 2"),
    ({**GOOD, "temperature": -0.1}, 400, "temperature"),
    ({**GOOD, "top_p": 0}, 400, "top_p"),
    ({**GOOD, "n": 0}, 400, "n: Input should be greater than or equal to 1"),
    ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop: at most 4 stop sequences, got 5"),
    ({**GOOD, "stop": [""]}, 400, "stop: each stop sequence"),
    ({**GOOD, "prompt": "word " * 600}, 400, "this model's context is 512 tokens"),
    ({**GOOD, "prompt": []}, 400, "prompt: prompt must not be an empty list"),
    ({**GOOD, "prompt": [1, 99999]}, 400, "token id 99999 is outside the vocabulary"),
    ({**GOOD, "logprobs": 6}, 400, "logprobs"),
    ({**GOOD, "echo": True}, 400, "echo is not supported"),
    ({**GOOD, "presence_penalty": 0.5}, 400, "penalties are not supported"),
    ({**GOOD, "temperature": "hot"}, 400, "temperature"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_COMPLETIONS)
def test_bad_completion_requests(server: LiveServer, body: Any, status: int, message: str) -> None:
    resp = post(server, "/v1/completions", body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert message in error["message"]
    assert "\n" not in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_bad_chat_requests(server: LiveServer) -> None:
    chat = {"model": "demo", "max_tokens": 4}
    cases = [
        ({**chat, "messages": []}, "messages"),
        ({**chat, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        (
            {**chat, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 50},
            "top_logprobs",
        ),
    ]
    for body, param in cases:
        resp = post(server, "/v1/chat/completions", body)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == param


def test_unknown_route_and_method_use_the_error_shape(server: LiveServer) -> None:
    assert (
        httpx.get(f"{server.url}/v1/nothing")
        .json()["error"]["message"]
        .startswith("GET /v1/nothing")
    )
    assert httpx.get(f"{server.url}/v1/completions").status_code == 405


def test_openai_client_sees_typed_errors(server: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="is not served here"):
        client.completions.create(model="../merged", prompt="hi", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="demo", prompt="hi", max_tokens=2, temperature=9)


def test_bearer_token(trained_run: Trained, tmp_path: Any) -> None:
    live = serve(trained_run.merged, name="demo", api_key="s3cret-token")
    try:
        assert httpx.get(f"{live.url}/healthz").status_code == 200  # probes need no token
        assert httpx.get(f"{live.url}/readyz").status_code == 200
        for key in ("wrong", ""):
            bad = openai.OpenAI(base_url=f"{live.url}/v1", api_key=key or "x", max_retries=0)
            with pytest.raises(openai.AuthenticationError, match="bearer token"):
                bad.models.list()
        resp = httpx.post(f"{live.url}/v1/completions", json=GOOD)
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key"
        good = openai.OpenAI(base_url=f"{live.url}/v1", api_key="s3cret-token", max_retries=0)
        assert good.completions.create(**GOOD).choices[0].text is not None
    finally:
        live.stop()


def running(server: LiveServer) -> int:
    assert server.state.engine is not None
    return server.state.engine.stats().running


def wait_for(predicate: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_client_disconnect_cancels_generation(server: LiveServer) -> None:
    engine = server.state.engine
    assert engine is not None
    before = server.state.metrics.cancelled._value.get()
    body = {**GOOD, "max_tokens": 500, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as resp:
        lines = resp.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        assert running(server) == 1
    # the connection is closed: the engine drops the sequence long before 500 tokens
    wait_for(lambda: running(server) == 0, "the cancelled row to leave the batch")
    assert server.state.metrics.cancelled._value.get() == before + 1


def test_non_streaming_client_that_gives_up_cancels_too(server: LiveServer) -> None:
    """A plain (non-streaming) request whose client times out: the server notices the closed
    connection while it waits and cancels the sequence. The engine is held in its forward
    pass (a hook on the real model) so the sequence cannot finish first."""
    engine = server.state.engine
    assert engine is not None
    gate, in_forward = threading.Event(), threading.Event()

    def hold(*_: Any) -> None:
        in_forward.set()
        gate.wait(60)

    before = server.state.metrics.cancelled._value.get()
    hook = engine.model.register_forward_pre_hook(hold)
    try:
        body = {**GOOD, "max_tokens": 200, "ignore_eos": True}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{server.url}/v1/completions", json=body, timeout=httpx.Timeout(30, read=0.5)
            )
        assert in_forward.is_set()
        wait_for(
            lambda: server.state.metrics.cancelled._value.get() == before + 1,
            "the server to notice the closed connection",
        )
    finally:
        hook.remove()
        gate.set()
    wait_for(lambda: running(server) == 0, "the cancelled row to leave the batch")


def test_over_capacity_answers_429_with_retry_after(trained_run: Trained) -> None:
    live = serve(trained_run.merged, name="demo", max_batch=1, max_queue=1)
    engine = live.state.engine
    assert engine is not None
    # Hold the engine inside its first forward pass (a hook on the real model), so the
    # queue's state is fixed while we look at it; released at the end.
    gate = threading.Event()
    in_forward = threading.Event()

    def hold(*_: Any) -> None:
        in_forward.set()
        gate.wait(60)

    hook = engine.model.register_forward_pre_hook(hold)
    answers: dict[str, httpx.Response] = {}
    try:
        assert post(live, "/v1/completions", {**GOOD, "n": 2}).status_code == 429
        first = threading.Thread(
            target=lambda: answers.setdefault("a", post(live, "/v1/completions", GOOD))
        )
        first.start()
        wait_for(in_forward.is_set, "the first request to reach the model")
        second = threading.Thread(
            target=lambda: answers.setdefault("b", post(live, "/v1/completions", GOOD))
        )
        second.start()
        wait_for(lambda: engine.stats().waiting == 1, "the second request to queue")
        third = post(live, "/v1/completions", GOOD)
        assert third.status_code == 429
        assert third.headers["retry-after"] == "1"
        assert third.json()["error"]["code"] == "queue_full"
        assert third.json()["error"]["type"] == "rate_limit_error"
    finally:
        hook.remove()
        gate.set()
        for t in ("first", "second"):
            thread = locals().get(t)
            if thread is not None:
                thread.join(timeout=60)
        live.stop()
    assert answers["a"].status_code == 200 and answers["b"].status_code == 200


def test_serving_refuses_weights_that_differ_from_their_manifest(trained_run, tmp_path):
    """A flipped byte in the merged model (which carries a SHA-256 manifest) is refused at
    load with the integrity error, before anything is served."""
    import shutil

    from finetune_runtime.errors import IntegrityError
    from finetune_runtime.serving.loading import load, resolve_source

    copy = tmp_path / "merged"
    shutil.copytree(trained_run.merged, copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="model.safetensors"):
        load(resolve_source(str(copy)))
