"""Token ids to text as they arrive: incremental decoding and stop sequences.

A byte-level tokenizer can split one character over several tokens, and a stop
sequence can arrive in pieces; so text is released only once it is certain: never a
trailing replacement character, never a suffix that might still become a stop sequence.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"


class TextStream:
    """Accumulates one choice's tokens; `push` returns the newly certain text."""

    def __init__(self, tokenizer: Any, stops: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        self.ids: list[int] = []
        self.emitted = 0  # characters of the text already released
        self.text = ""
        self.stopped = False

    def _decode(self) -> str:
        return str(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    def push(self, token: int) -> str:
        """Add a token; returns the text now safe to release ("" when none)."""
        self.ids.append(token)
        full = self._decode()
        hit = first_stop(full, self.stops, self.emitted)
        if hit is not None:
            self.stopped = True
            self.text = full[:hit]
            return self._release(hit)
        self.text = full
        return self._release(len(full) - held_back(full, self.stops))

    def finish(self) -> str:
        """The end of the sequence (eos, length): release whatever was held back."""
        return self._release(len(self.text))

    def _release(self, end: int) -> str:
        if end <= self.emitted:
            return ""
        delta = self.text[self.emitted : end]
        self.emitted = end
        return delta


def first_stop(text: str, stops: list[str], start: int) -> int | None:
    """Index of the earliest stop sequence that ends after `start`, or None."""
    found = [i for i in (text.find(s, max(0, start - len(s) + 1)) for s in stops) if i >= 0]
    return min(found) if found else None


def held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters must wait: a partial character or a partial stop."""
    hold = len(text) - len(text.rstrip(REPLACEMENT))
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k)
                break
    return hold
