"""OpenAI response bodies and stream chunks, built from a finished or running Generation."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from finetune_runtime.serving.generation import Generation, Update
from finetune_runtime.serving.sampling import Choice
from finetune_runtime.serving.schemas import ApiError


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _token_text(tokenizer: Any, token: int) -> str:
    return str(tokenizer.decode([token]))


def completion_logprobs(tokenizer: Any, picks: list[Choice]) -> dict[str, Any]:
    tokens = [_token_text(tokenizer, c.token) for c in picks]
    offsets, at = [], 0
    for text in tokens:
        offsets.append(at)
        at += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": [c.logprob for c in picks],
        "top_logprobs": [{_token_text(tokenizer, t): lp for t, lp in c.top} for c in picks],
        "text_offset": offsets,
    }


def chat_logprobs(tokenizer: Any, picks: list[Choice]) -> dict[str, Any]:
    def entry(token: int, logprob: float) -> dict[str, Any]:
        text = _token_text(tokenizer, token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    content = []
    for c in picks:
        item = entry(c.token, c.logprob or 0.0)
        item["top_logprobs"] = [entry(t, lp) for t, lp in c.top]
        content.append(item)
    return {"content": content}


async def collect(gen: Generation, disconnected: Any) -> dict[int, str]:
    texts: dict[int, str] = {c.index: "" for c in gen.choices}
    async for update in gen.updates(disconnected):
        texts[update.index] += update.delta
    return texts


def completion_body(
    gen: Generation, texts: dict[int, str], model: str, tokenizer: Any, logprobs: bool
) -> dict[str, Any]:
    return {
        "id": new_id("cmpl"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": c.index,
                "text": texts[c.index],
                "logprobs": completion_logprobs(tokenizer, c.logprobs) if logprobs else None,
                "finish_reason": c.finish,
            }
            for c in gen.choices
        ],
        "usage": gen.usage(),
    }


def chat_body(
    gen: Generation, texts: dict[int, str], model: str, tokenizer: Any, logprobs: bool
) -> dict[str, Any]:
    return {
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": c.index,
                "message": {"role": "assistant", "content": texts[c.index]},
                "logprobs": chat_logprobs(tokenizer, c.logprobs) if logprobs else None,
                "finish_reason": c.finish,
            }
            for c in gen.choices
        ],
        "usage": gen.usage(),
    }


def sse(data: Any) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


async def stream_events(
    gen: Generation, model: str, tokenizer: Any, *, chat: bool, logprobs: bool, usage: bool
) -> AsyncIterator[str]:
    """Server-sent events: one chunk per update, a usage chunk if asked, then [DONE]."""
    base = {
        "id": new_id("chatcmpl" if chat else "cmpl"),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
    }
    if chat:
        for c in gen.choices:
            first = {"index": c.index, "delta": {"role": "assistant", "content": ""}}
            yield sse({**base, "choices": [{**first, "logprobs": None, "finish_reason": None}]})
    try:
        async for update in gen.updates():
            if not update.delta and update.finish is None:
                continue
            yield sse({**base, "choices": [_chunk_choice(update, tokenizer, chat, logprobs)]})
    except ApiError as exc:
        yield sse(exc.body())
        return
    if usage:
        yield sse({**base, "choices": [], "usage": gen.usage()})
    yield "data: [DONE]\n\n"


def _chunk_choice(update: Update, tokenizer: Any, chat: bool, logprobs: bool) -> dict[str, Any]:
    picks = [update.choice] if logprobs and update.choice is not None else []
    if chat:
        return {
            "index": update.index,
            "delta": {"content": update.delta} if update.delta else {},
            "logprobs": chat_logprobs(tokenizer, picks) if picks else None,
            "finish_reason": update.finish,
        }
    return {
        "index": update.index,
        "text": update.delta,
        "logprobs": completion_logprobs(tokenizer, picks) if picks else None,
        "finish_reason": update.finish,
    }
