"""Choosing the next token for each row of a batch: greedy, temperature, top-p, per-request seed.

Greedy (temperature 0) is a plain argmax of the model's logits, exactly what
`transformers` `generate(do_sample=False)` does, so served greedy outputs equal it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    """How one sequence picks its tokens."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: int | None = None  # None: no logprobs; k: the chosen token's plus the top k
    ignore_eos: bool = False
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator()
        if self.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(self.seed)


@dataclass(frozen=True)
class Choice:
    """The token picked for one row, and its logprobs when asked for."""

    token: int
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()


def pick(logits: torch.Tensor, params: SamplingParams) -> Choice:
    """One row's next token from its last-position logits (shape [vocab])."""
    logits = logits.float()
    if params.temperature == 0.0:
        token = int(torch.argmax(logits))
    else:
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            probs = top_p_filter(probs, params.top_p)
        token = int(torch.multinomial(probs, 1, generator=params.generator))
    if params.logprobs is None:
        return Choice(token)
    logp = torch.log_softmax(logits, dim=-1)
    top: tuple[tuple[int, float], ...] = ()
    if params.logprobs > 0:
        values, ids = torch.topk(logp, params.logprobs)
        top = tuple((int(i), float(v)) for i, v in zip(ids, values, strict=True))
    return Choice(token, float(logp[token]), top)


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability mass reaches top_p (nucleus)."""
    sorted_probs, order = torch.sort(probs, descending=True)
    before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    sorted_probs[before >= top_p] = 0.0
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum()
