"""Segments -> token ids and labels (prompt tokens masked with -100).

Each segment is tokenized on its own and the pieces are concatenated, so the
trained tokens are exactly the response's tokens (no BPE merge across the
prompt/response boundary). BOS is prepended when the tokenizer normally adds
one and the text does not already start with it; every example ends with EOS,
which is trained.

SentencePiece-style tokenizers (Llama 2, Mistral) prepend a word-boundary marker
("▁") to every input, so a response tokenized alone would start with a spurious
space. For those, every segment after the first is tokenized behind an anchor
("\n") whose tokens are then dropped: the segment gets the tokens it has as a
continuation, exactly as when the model generates it after the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from finetune_runtime.data.formats import Segment

IGNORE_INDEX = -100
ANCHOR = "\n"


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def trainable(self) -> int:
        """Tokens that contribute to the loss (label at position 0 never does: shift)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


class SegmentTokenizer:
    """Tokenizes batches of segmented examples with one tokenizer."""

    def __init__(self, tokenizer: Any, sequence_len: int) -> None:
        self.tokenizer = tokenizer
        self.sequence_len = sequence_len
        self.bos_id: int | None = tokenizer.bos_token_id
        self.eos_id: int | None = tokenizer.eos_token_id
        self.bos_text: str | None = tokenizer.bos_token
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        self.adds_bos = self.bos_id is not None and bool(probe) and probe[0] == self.bos_id
        self.backend = self._same_backend(tokenizer)
        self.anchor_ids: list[int] | None = None
        if not self._continues_cleanly():
            self.anchor_ids = self._ids([ANCHOR])[0]

    def _ids(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        if self.backend is not None:
            return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]
        return list(self.tokenizer(texts, add_special_tokens=False)["input_ids"])

    @staticmethod
    def _same_backend(tokenizer: Any) -> Any:
        """A fast tokenizer's Rust backend, when it gives the very ids the Python wrapper
        gives (checked on probes with special tokens, spaces and newlines): about a
        quarter less CPU per token, the same tokens."""
        backend = getattr(tokenizer, "backend_tokenizer", None) if tokenizer.is_fast else None
        if backend is None:
            return None
        specials = " ".join(str(t) for t in tokenizer.all_special_tokens)
        probes = ["a", " Answer:\n", "Yes it is  ", "\n\n### Response:\n", f"{specials} x\n"]
        wrapped = list(tokenizer(probes, add_special_tokens=False)["input_ids"])
        direct = [e.ids for e in backend.encode_batch(probes, add_special_tokens=False)]
        return backend if wrapped == direct else None

    def _continues_cleanly(self) -> bool:
        """Whether text tokenized alone gets the tokens it has after other text."""
        head, tail = "Answer:\n", "Yes it is"
        joint, alone_head, alone_tail = self._ids([head + tail, head, tail])
        return joint == alone_head + alone_tail

    def _tokenize(self, examples: Sequence[Sequence[Segment]]) -> list[list[int]]:
        anchor = self.anchor_ids
        texts = [
            (ANCHOR + seg.text) if anchor is not None and j > 0 else seg.text
            for example in examples
            for j, seg in enumerate(example)
        ]
        pieces = self._ids(texts)
        if anchor is None:
            return pieces
        k = 0
        for example in examples:
            for j in range(len(example)):
                if j > 0:
                    piece = pieces[k]
                    if piece[: len(anchor)] == anchor:
                        pieces[k] = piece[len(anchor) :]
                    else:  # the anchor merged with the text: tokenize it alone after all
                        pieces[k] = self._ids([example[j].text])[0]
                k += 1
        return pieces

    def encode_many(self, examples: Sequence[Sequence[Segment]]) -> list[Encoded]:
        pieces = self._tokenize(examples)
        out: list[Encoded] = []
        k = 0
        for example in examples:
            ids: list[int] = []
            labels: list[int] = []
            if self.adds_bos and not (example and example[0].text.startswith(self.bos_text or "")):
                ids.append(self.bos_id)  # type: ignore[arg-type]
                labels.append(IGNORE_INDEX)
            for seg in example:
                piece = pieces[k]
                k += 1
                ids.extend(piece)
                labels.extend(piece if seg.train else [IGNORE_INDEX] * len(piece))
            if self.eos_id is not None:
                if not ids or ids[-1] != self.eos_id:
                    ids.append(self.eos_id)
                    labels.append(self.eos_id)
                else:  # the template already ended with EOS: make sure it is trained
                    labels[-1] = self.eos_id
            truncated = len(ids) > self.sequence_len
            if truncated:
                ids, labels = ids[: self.sequence_len], labels[: self.sequence_len]
            out.append(Encoded(ids, labels, truncated))
        return out
