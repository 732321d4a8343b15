"""One API request in flight: its choices as engine sequences, their tokens as text.

The engine thread emits tokens; they cross into the event loop through an asyncio
queue, become text (stop sequences applied) and are yielded as `Update`s, which the
routes turn into one JSON response or a server-sent event stream. A client that goes
away cancels every sequence of its request, so the engine stops spending steps on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from finetune_runtime.serving.engine import Engine, QueueFull, Sequence
from finetune_runtime.serving.metrics import ServeMetrics
from finetune_runtime.serving.sampling import Choice, SamplingParams
from finetune_runtime.serving.schemas import ApiError
from finetune_runtime.serving.text import TextStream

DISCONNECT_POLL_S = 0.5
RETRY_AFTER_S = 1


@dataclass
class ChoiceState:
    index: int
    text: TextStream
    tokens: int = 0
    finish: str | None = None
    logprobs: list[Choice] = field(default_factory=list)


@dataclass(frozen=True)
class Update:
    """New text for one choice; `finish` is set on its last update."""

    index: int
    delta: str
    choice: Choice | None = None
    finish: str | None = None


class Generation:
    """Submits a request's sequences (prompt-major: choice = prompt * n + j) and follows them."""

    def __init__(
        self,
        engine: Engine,
        tokenizer: Any,
        prompts: list[list[int]],
        params: Callable[[int], SamplingParams],
        *,
        n: int,
        stops: list[str],
        adapter: str | None,
        metrics: ServeMetrics,
        endpoint: str,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, Choice | str]] = asyncio.Queue()
        self.metrics = metrics
        self.endpoint = endpoint
        self.started = time.monotonic()
        self.first_token_at: float | None = None
        self.prompt_tokens = sum(len(p) for p in prompts)
        self.choices: list[ChoiceState] = []
        self.seqs: list[Sequence] = []
        for prompt in prompts:
            for _ in range(n):
                index = len(self.seqs)
                self.choices.append(ChoiceState(index, TextStream(tokenizer, stops)))
                self.seqs.append(Sequence(prompt, params(index), self._emitter(index), adapter))
        try:
            engine.submit(self.seqs)
        except QueueFull as exc:
            raise ApiError(
                429,
                f"the server is at capacity ({exc}); retry after {RETRY_AFTER_S}s",
                kind="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None
        metrics.prompt_tokens.inc(self.prompt_tokens)

    def _emitter(self, index: int) -> Callable[[Choice | str], None]:
        def emit(event: Choice | str) -> None:  # engine thread
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, event))

        return emit

    @property
    def completion_tokens(self) -> int:
        return sum(c.tokens for c in self.choices)

    def usage(self) -> dict[str, int]:
        done = self.completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": done,
            "total_tokens": self.prompt_tokens + done,
        }

    def cancel(self) -> None:
        """Stop every unfinished sequence (the client went away)."""
        for seq, state in zip(self.seqs, self.choices, strict=True):
            if state.finish is None and not seq.done.is_set():
                self.metrics.cancelled.inc()
            seq.cancel()

    async def updates(
        self, disconnected: Callable[[], Awaitable[bool]] | None = None
    ) -> AsyncIterator[Update]:
        """Text as it becomes certain, per choice, until every choice has finished."""
        remaining = len(self.choices)
        try:
            while remaining:
                try:
                    index, event = await asyncio.wait_for(self.queue.get(), DISCONNECT_POLL_S)
                except TimeoutError:
                    if disconnected is not None and await disconnected():
                        return
                    continue
                update = self._apply(self.choices[index], event)
                if update is None:
                    continue
                if update.finish is not None:
                    remaining -= 1
                yield update
        finally:
            self.cancel()
            self.metrics.latency.labels(self.endpoint).observe(time.monotonic() - self.started)

    def _apply(self, state: ChoiceState, event: Choice | str) -> Update | None:
        if state.finish is not None:
            return None  # a token that raced a stop sequence
        if isinstance(event, str):
            if event.startswith("error"):
                raise ApiError(500, f"generation failed: {event[7:]}", kind="server_error")
            state.finish = "length" if event == "length" else "stop"
            if event == "stop":
                state.tokens += 1  # the end-of-sequence token, counted as OpenAI does
            return Update(state.index, state.text.finish(), finish=state.finish)
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
            self.metrics.ttft.labels(self.endpoint).observe(self.first_token_at - self.started)
        state.tokens += 1
        self.metrics.generation_tokens.inc()
        if event.logprob is not None:
            state.logprobs.append(event)
        delta = state.text.push(event.token)
        if state.text.stopped:
            state.finish = "stop"
            self.seqs[state.index].cancel()
        return Update(state.index, delta, event, state.finish)
