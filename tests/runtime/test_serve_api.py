"""`finetune serve` answering the official `openai` client on loopback.

A tiny LoRA is trained and merged in the session (real torch), served by the real app
on uvicorn, and every answer is compared with transformers `generate` on the same weights.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
import torch
from serve_fixtures import Trained, reference_generate
from serve_helpers import LiveServer, serve
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    "Below is an instruction that describes a task.",
    "### Instruction: Name three colors.",
    "Write a haiku about",
    "The capital of France is",
    "hello",
    "Explain gradient descent in one sentence.",
    "### Response:",
    "Give me a list of fruits",
]


@pytest.fixture(scope="module")
def server(trained_run: Trained) -> Any:
    live = serve(trained_run.merged, name="demo", max_batch=16, max_queue=128)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def reference(trained_run: Trained) -> tuple[Any, Any]:
    model = AutoModelForCausalLM.from_pretrained(trained_run.merged, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(trained_run.merged)


def expected(reference: tuple[Any, Any], prompt: str, max_tokens: int) -> str:
    model, tok = reference
    ids = reference_generate(model, tok(prompt)["input_ids"], max_tokens, tok.eos_token_id)
    return tok.decode(ids, skip_special_tokens=True)


def test_models_health_and_ready(server: LiveServer, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == ["demo"]
    import httpx

    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_completion_greedy_equals_generate(client: openai.OpenAI, reference: Any) -> None:
    for prompt in PROMPTS[:4]:
        out = client.completions.create(model="demo", prompt=prompt, max_tokens=16, temperature=0)
        want = expected(reference, prompt, 16)
        assert want  # the lightly trained model says something: the comparison has teeth
        assert out.choices[0].text == want
        assert out.choices[0].finish_reason in ("length", "stop")
        assert out.usage is not None and out.usage.prompt_tokens == len(
            reference[1](prompt)["input_ids"]
        )
        assert 1 <= out.usage.completion_tokens <= 16


def chat_expected(
    reference: tuple[Any, Any], messages: list[dict[str, str]], n: int
) -> tuple[str, int, list[int]]:
    model, tok = reference
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    out = reference_generate(model, ids, n, tok.eos_token_id)
    return tok.decode(out, skip_special_tokens=True), len(ids), out


CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three colors."},
]


def test_chat_uses_the_chat_template(client: openai.OpenAI, reference: Any) -> None:
    """The Alpaca-trained model ends a ChatML turn at once; the random base (in the adapter
    test) shows chat text equal to generate."""
    chat_messages = CHAT
    out = client.chat.completions.create(
        model="demo", messages=chat_messages, max_tokens=12, temperature=0
    )
    want, prompt_tokens, ids = chat_expected(reference, chat_messages, 12)
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == want
    assert out.usage is not None and out.usage.prompt_tokens == prompt_tokens
    eos = 1 if out.choices[0].finish_reason == "stop" else 0
    assert out.usage.completion_tokens == len(ids) + eos


def test_streaming_matches_the_whole_answer(client: openai.OpenAI) -> None:
    prompt = PROMPTS[5]
    whole = client.completions.create(model="demo", prompt=prompt, max_tokens=20, temperature=0)
    chunks = list(
        client.completions.create(
            model="demo",
            prompt=prompt,
            max_tokens=20,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and all(f is None for f in finishes[:-1])
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]

    messages = [{"role": "user", "content": PROMPTS[5]}]
    chat = client.chat.completions.create(
        model="demo", messages=messages, max_tokens=10, temperature=0
    )  # type: ignore[arg-type]
    stream = client.chat.completions.create(
        model="demo",
        messages=messages,
        max_tokens=10,
        temperature=0,
        stream=True,  # type: ignore[arg-type]
    )
    parts = list(stream)
    assert parts[0].choices[0].delta.role == "assistant"
    assert (
        "".join(p.choices[0].delta.content or "" for p in parts) == chat.choices[0].message.content
    )
    assert parts[-1].choices[0].finish_reason == chat.choices[0].finish_reason


def test_64_concurrent_requests_all_correct(client: openai.OpenAI, reference: Any) -> None:
    jobs = [(f"{PROMPTS[i % len(PROMPTS)]} {i}", 4 + i % 13) for i in range(64)]
    want = [expected(reference, p, n) for p, n in jobs]

    def ask(job: tuple[str, int]) -> str:
        out = client.completions.create(
            model="demo", prompt=job[0], max_tokens=job[1], temperature=0
        )
        return out.choices[0].text

    with ThreadPoolExecutor(64) as pool:
        got = list(pool.map(ask, jobs))
    assert got == want


def test_stop_sequences_cut_the_text(client: openai.OpenAI, reference: Any) -> None:
    prompt = PROMPTS[1]
    full = expected(reference, prompt, 24)
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert len(stop) == 2
    out = client.completions.create(
        model="demo", prompt=prompt, max_tokens=24, temperature=0, stop=[stop, "never-seen"]
    )
    assert out.choices[0].text == full[: full.index(stop)]
    assert out.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model="demo", prompt=prompt, max_tokens=24, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == full[: full.index(stop)]


def test_sampling_seed_n_and_logprobs(client: openai.OpenAI) -> None:
    args: dict[str, Any] = dict(
        model="demo", prompt="hello", max_tokens=12, temperature=1.3, top_p=0.9
    )
    one = client.completions.create(seed=5, n=3, **args)
    two = client.completions.create(seed=5, n=3, **args)
    assert [c.text for c in one.choices] == [c.text for c in two.choices]
    assert [c.index for c in one.choices] == [0, 1, 2]
    assert len({c.text for c in one.choices}) > 1  # each choice samples on its own
    lp = client.completions.create(
        model="demo", prompt="hello", max_tokens=6, temperature=0, logprobs=2
    )
    probs = lp.choices[0].logprobs
    assert probs is not None and probs.token_logprobs is not None and probs.top_logprobs is not None
    eos = 1 if lp.choices[0].finish_reason == "stop" else 0  # counted in usage, not a text token
    assert len(probs.token_logprobs) == lp.usage.completion_tokens - eos  # type: ignore[union-attr]
    assert all(v <= 0 for v in probs.token_logprobs)
    # greedy: the chosen token is the most likely one
    assert all(
        max(top.values()) == pytest.approx(v)
        for top, v in zip(probs.top_logprobs, probs.token_logprobs, strict=True)
    )


def test_metrics_count_requests_tokens_and_latency(
    server: LiveServer, client: openai.OpenAI
) -> None:
    import httpx

    client.completions.create(model="demo", prompt="hello", max_tokens=3, temperature=0)
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        'finetune_serve_requests_total{code="200",endpoint="/v1/completions"}',
        "finetune_serve_generation_tokens_total",
        "finetune_serve_prompt_tokens_total",
        'finetune_serve_request_latency_seconds_bucket{endpoint="/v1/completions"',
        'finetune_serve_time_to_first_token_seconds_count{endpoint="/v1/completions"}',
        "finetune_serve_queue_depth",
        "finetune_serve_running_sequences",
    ):
        assert name in text, name
    tokens = [
        ln for ln in text.splitlines() if ln.startswith("finetune_serve_generation_tokens_total")
    ]
    assert float(tokens[0].split()[-1]) >= 3


def test_adapters_selected_by_model_name(
    trained_run: Trained, second_run: Trained, tiny_model_dir: Any
) -> None:
    """One base, two adapters, in one batch: each request gets its own adapter's answer."""
    from peft import PeftModel

    live = serve(
        tiny_model_dir,
        adapters=[f"a={trained_run.adapter}", f"b={second_run.adapter}"],
        name="base",
    )
    try:
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="x", max_retries=0)
        assert sorted(m.id for m in client.models.list().data) == ["a", "b", "base"]
        tok = AutoTokenizer.from_pretrained(tiny_model_dir)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        peft_model = PeftModel.from_pretrained(base, trained_run.adapter, adapter_name="a")
        peft_model.load_adapter(second_run.adapter, adapter_name="b")
        peft_model.eval()
        prompt = PROMPTS[0]
        ids = tok(prompt)["input_ids"]
        want = {}
        for name in ("a", "b"):
            peft_model.set_adapter(name)
            want[name] = tok.decode(
                reference_generate(peft_model, ids, 12, tok.eos_token_id), skip_special_tokens=True
            )
        with peft_model.disable_adapter():
            want["base"] = tok.decode(
                reference_generate(peft_model, ids, 12, tok.eos_token_id), skip_special_tokens=True
            )
        assert len(set(want.values())) == 3  # the adapters really differ

        def ask(name: str) -> str:
            out = client.completions.create(model=name, prompt=prompt, max_tokens=12, temperature=0)
            return out.choices[0].text

        # chat on the random base: text, equal to generate on the template, with logprobs
        chat_ids = tok(
            tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True),
            add_special_tokens=False,
        )["input_ids"]
        with peft_model.disable_adapter():
            chat_want = reference_generate(peft_model, chat_ids, 8, tok.eos_token_id)
        chat = client.chat.completions.create(
            model="base", messages=CHAT, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3
        )  # type: ignore[arg-type]
        assert chat_want and chat.choices[0].message.content == tok.decode(
            chat_want, skip_special_tokens=True
        )
        content = chat.choices[0].logprobs.content  # type: ignore[union-attr]
        assert [len(t.top_logprobs) for t in content] == [3] * len(chat_want)

        with ThreadPoolExecutor(6) as pool:
            names = ["a", "b", "base"] * 2
            got = list(pool.map(ask, names))
        assert got == [want[n] for n in names]
    finally:
        live.stop()
