"""Labelled-only LM head with chunked linear cross-entropy, in plain torch.

A causal LM's stock forward projects *every* position onto the vocabulary and keeps
the (tokens x vocab) logits for backward, although with `train_on_inputs: false` only
the response tokens carry a label (about a third of them in instruction data). Here
the hidden states are gathered at labelled positions first, then projected and scored
in chunks of rows whose logits never outlive the chunk:

- the LM head is a plain `nn.Linear` (the usual case: LoRA does not wrap it):
  `_LinearCrossEntropy` computes the loss and, in the same pass, the gradients of
  the hidden states (and of the head's weight/bias when they train). Backward only
  scales them. Nothing of size vocab is kept between forward and backward.
- any other head (peft `modules_to_save`, LoRA on the head, DeepSpeed ZeRO-3's
  partitioned weight): each chunk runs through the head module under activation
  checkpointing, so its logits are recomputed rather than stored.

The loss equals transformers' `ForCausalLMLoss` (shift by one, ignore -100, sum over
tokens divided by `num_items_in_batch`, else the mean) to float rounding; the tests
compare loss and gradients with the stock forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
CHUNK_ELEMENTS = 8 * 1024 * 1024  # logits per chunk: 32 MiB in fp32, whatever the vocab


def chunk_rows(vocab_size: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, vocab_size))


def labelled_positions(
    hidden: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states that predict a label, those labels): position t predicts label t+1."""
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    return hidden[:, :-1][keep], targets[keep]


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i @ weight.T + bias, target_i), gradients computed chunk by chunk."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        chunk: int,
        compute_dtype: torch.dtype,
    ) -> torch.Tensor:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if need_h else None
        zeros = torch.zeros
        grad_w = zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = (
            zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        )
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        w = weight.to(compute_dtype)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk].to(compute_dtype)
            t = targets[start : start + chunk]
            logits = (h @ w.T).float()
            if bias is not None:
                logits += bias.float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if not (need_h or need_w or need_b):
                continue
            # d CE / d logits = softmax - onehot, formed in place of the logits.
            grad = logits.sub_(lse[:, None]).exp_()
            grad[torch.arange(t.shape[0], device=t.device), t] -= 1.0
            if grad_b is not None:
                grad_b += grad.sum(0)
            g = grad.to(compute_dtype)
            if need_h:
                grad_h[start : start + chunk] = (g @ w).to(hidden.dtype)  # type: ignore[index]
            if grad_w is not None:
                grad_w += (g.T @ h).float()
        ctx.save_for_backward(
            grad_h,
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None or bias is None else grad_b.to(bias.dtype),
        )
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        grad_h, grad_w, grad_b = ctx.saved_tensors
        scale = grad_out.float()

        def scaled(g: torch.Tensor | None) -> torch.Tensor | None:
            return None if g is None else (g.float() * scale).to(g.dtype)

        return scaled(grad_h), scaled(grad_w), scaled(grad_b), None, None, None


def _fusable(head: torch.nn.Module) -> bool:
    """A plain Linear whose full weight is here (not a ZeRO-3 partition, not a peft wrapper)."""
    weight = getattr(head, "weight", None)
    return (
        type(head) is torch.nn.Linear
        and weight is not None
        and weight.numel() > 0
        and not hasattr(weight, "ds_id")
    )


def _chunk_ce(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def linear_cross_entropy_sum(
    hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Summed token cross-entropy of `head(hidden)` against `targets`, chunked over rows."""
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0  # keeps the graph (and DDP's hooks) intact
    if _fusable(head):
        compute = (
            torch.get_autocast_dtype(hidden.device.type)
            if torch.is_autocast_enabled(hidden.device.type)
            else hidden.dtype
        )
        with torch.autocast(hidden.device.type, enabled=False):
            return _LinearCrossEntropy.apply(  # type: ignore[no-any-return]
                hidden, head.weight, head.bias, targets, chunk, compute
            )
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk):
        part = checkpoint(
            _chunk_ce,
            head,
            hidden[start : start + chunk],
            targets[start : start + chunk],
            use_reentrant=False,
        )
        total = total + part
    return total


def causal_lm_loss(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    head: torch.nn.Module,
    vocab_size: int,
    num_items_in_batch: Any = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """transformers' causal-LM loss from the last hidden states, logits only where labelled."""
    selected, targets = labelled_positions(hidden, labels.to(hidden.device))
    rows = chunk or chunk_rows(vocab_size)
    total = linear_cross_entropy_sum(selected, head, targets, rows)
    if num_items_in_batch is None:
        return total / max(1, targets.shape[0])
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch
