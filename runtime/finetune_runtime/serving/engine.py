"""Continuous batching at the token step, in one worker thread.

Every step the engine (1) drops rows that finished or whose client went away,
(2) admits waiting sequences (one left-padded prefill, then their KV rows join the
running cache), and (3) runs one decode forward for all running rows together. A
sequence never waits for another to finish. The waiting queue is bounded: `submit`
refuses work over capacity instead of buffering it (the API answers 429).
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from finetune_runtime.serving import kvbatch
from finetune_runtime.serving.sampling import Choice, SamplingParams, pick

log = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


class QueueFull(Exception):
    """More sequences waiting than the queue holds."""


@dataclass
class Sequence:
    """One generated choice: its prompt, its sampling, and where its tokens go.

    `emit` is called from the engine thread with a `Choice` per token, then once with
    the finish reason ("stop", "length", "cancelled" or "error: ...").
    """

    prompt: list[int]
    params: SamplingParams
    emit: Callable[[Choice | str], None]
    adapter: str | None = None
    generated: int = 0
    done: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Stop generating (client gone, stop sequence seen); the engine drops the row."""
        self.done.set()


@dataclass(frozen=True)
class EngineStats:
    waiting: int
    running: int


class Engine:
    """Owns the model; one thread runs the batch, any thread may submit or cancel."""

    def __init__(
        self,
        model: Any,
        *,
        eos_ids: set[int],
        pad_id: int,
        max_batch: int = 32,
        max_queue: int = 256,
        peft: bool = False,
        on_step: Callable[[EngineStats], None] | None = None,
    ) -> None:
        self.model = model
        self.eos_ids = eos_ids
        self.pad_id = pad_id
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.peft = peft
        self.on_step = on_step
        self._waiting: deque[Sequence] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._rows: list[Sequence] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None
        self._last = torch.zeros(0, dtype=torch.long)
        self._pos = torch.zeros(0, dtype=torch.long)
        self._extra = _forward_options(model)
        self._thread = threading.Thread(target=self._run, name="serve-engine", daemon=True)

    # ---------------------------------------------------------------- any thread

    def start(self) -> Engine:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def submit(self, seqs: list[Sequence]) -> None:
        """Queue all of `seqs` or none of them (QueueFull)."""
        with self._cond:
            if len(self._waiting) + len(seqs) > self.max_queue:
                raise QueueFull(f"{len(self._waiting)} sequences waiting (max {self.max_queue})")
            self._waiting.extend(seqs)
            self._cond.notify_all()

    def stats(self) -> EngineStats:
        return EngineStats(waiting=len(self._waiting), running=len(self._rows))

    # ---------------------------------------------------------------- engine thread

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._waiting and not self._rows:
                    self._cond.wait()
                if self._stop:
                    break
                admitted = self._take_waiting()
            try:
                with torch.inference_mode():
                    if admitted:
                        self._prefill(admitted)
                    if self._rows:
                        self._decode()
            except Exception as exc:  # a failed forward fails its rows, never the server
                log.exception("generation step failed")
                for seq in self._rows + admitted:
                    seq.emit(f"error: {type(exc).__name__}: {exc}")
                self._reset()
            if self.on_step:
                self.on_step(self.stats())
        for seq in list(self._waiting) + self._rows:
            seq.emit("cancelled")

    def _take_waiting(self) -> list[Sequence]:
        self._drop_finished()
        taken: list[Sequence] = []
        while self._waiting and len(self._rows) + len(taken) < self.max_batch:
            seq = self._waiting.popleft()
            if seq.done.is_set():
                seq.emit("cancelled")
            else:
                taken.append(seq)
        return taken

    def _reset(self) -> None:
        self._rows, self._cache, self._mask = [], None, None
        self._last = torch.zeros(0, dtype=torch.long)
        self._pos = torch.zeros(0, dtype=torch.long)

    def _model(self, ids, mask, pos, cache, rows) -> torch.Tensor:
        """One forward; returns the last position's logits, [rows, vocab]."""
        kwargs: dict[str, Any] = {"use_cache": True, self._extra["cache_arg"]: cache}
        if self._extra["logits_to_keep"]:
            kwargs["logits_to_keep"] = 1
        if self.peft:
            kwargs["adapter_names"] = [s.adapter or BASE_ADAPTER for s in rows]
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, **kwargs)
        return out.logits[:, -1, :]

    def _prefill(self, seqs: list[Sequence]) -> None:
        width = max(len(s.prompt) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, seq in enumerate(seqs):
            ids[i, width - len(seq.prompt) :] = torch.tensor(seq.prompt)
            mask[i, width - len(seq.prompt) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = self._model(ids, mask, pos, cache, seqs)
        self._cache, self._mask = kvbatch.join(self._cache, self._mask, cache, mask)
        self._rows += seqs
        self._last = torch.cat([self._last, torch.zeros(len(seqs), dtype=torch.long)])
        self._pos = torch.cat([self._pos, pos[:, -1] + 1])
        self._advance(logits, first=len(self._rows) - len(seqs))

    def _decode(self) -> None:
        assert self._mask is not None and self._cache is not None
        self._mask = torch.nn.functional.pad(self._mask, (0, 1), value=1)
        logits = self._model(
            self._last[:, None], self._mask, self._pos[:, None], self._cache, self._rows
        )
        self._pos = self._pos + 1
        self._advance(logits, first=0)

    def _advance(self, logits: torch.Tensor, first: int) -> None:
        """Pick a token for rows first.. and hand it to their clients."""
        for offset, row in enumerate(logits):
            i = first + offset
            seq = self._rows[i]
            if seq.done.is_set():
                continue
            choice = pick(row, seq.params)
            self._last[i] = choice.token
            seq.generated += 1
            if choice.token in self.eos_ids and not seq.params.ignore_eos:
                seq.done.set()
                seq.emit("stop")
                continue
            seq.emit(choice)
            if seq.generated >= seq.params.max_tokens:
                seq.done.set()
                seq.emit("length")

    def _drop_finished(self) -> None:
        keep = [i for i, s in enumerate(self._rows) if not s.done.is_set()]
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._reset()
            return
        assert self._cache is not None and self._mask is not None
        self._cache, self._mask = kvbatch.keep_rows(self._cache, self._mask, keep)
        self._rows = [self._rows[i] for i in keep]
        index = torch.tensor(keep, dtype=torch.long)
        self._last, self._pos = self._last[index], self._pos[index]


def _forward_options(model: Any) -> dict[str, Any]:
    """Which keyword the model takes its KV cache by (`cache` in recent transformers,
    `past_key_values` before), and whether it can skip the logits of prompt positions."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(inner.forward).parameters
    return {
        "cache_arg": "cache" if "cache" in params else "past_key_values",
        "logits_to_keep": "logits_to_keep" in params,
    }
