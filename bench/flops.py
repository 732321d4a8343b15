"""FLOP accounting and the CPU's measured matmul peak (for MFU).

Training FLOPs per non-pad token of a decoder-only transformer, LoRA on frozen weights:

    forward                 2·N_mm                 (every weight matmul: 2 FLOPs per weight)
    backward, activations   2·N_mm                 (frozen weights still pass gradients down)
    backward, weights       0 for frozen, 2·N_ad    (only adapter weights get a gradient)
    adapters                2·N_ad forward + 4·N_ad backward = 6·N_ad
    attention               12·L·d·T               (QKᵀ and AV: 4·L·d·T forward, twice that back)

    LoRA:          F = 4·N_mm + 6·N_ad + 12·L·d·T
    full fine-tune: F = 6·N_mm + 12·L·d·T        (the usual 6N + attention)

N_mm counts the weights that take part in matmuls (every Linear, the LM head included;
the embedding lookup is no matmul). T is the context a token attends to, taken as the
token-weighted mean example length (what a token of an example of length ℓ sees, counted
non-causally as PaLM's 6N + 12LHQT does). Norms, activations, softmax and the optimizer
are not counted: MFU is useful model FLOPs over peak, as usual.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FlopModel:
    matmul_params: int  # N_mm
    adapter_params: int  # N_ad
    layers: int
    hidden: int
    full_finetune: bool = False

    def per_token(self, context: float) -> float:
        """Training FLOPs for one token attending to `context` tokens."""
        attention = 12.0 * self.layers * self.hidden * context
        if self.full_finetune:
            return 6.0 * self.matmul_params + attention
        return 4.0 * self.matmul_params + 6.0 * self.adapter_params + attention


def flop_model(model: Any) -> FlopModel:
    """Count N_mm and N_ad of a (peft-wrapped) causal LM."""
    import torch

    try:
        import peft.tuners.lora as lora_layers

        lora_types: tuple[type, ...] = (lora_layers.LoraLayer,)
    except ImportError:  # pragma: no cover - peft is a runtime dependency
        lora_types = ()
    matmul = adapter = 0
    for module in model.modules():
        if lora_types and isinstance(module, lora_types):
            continue  # its base_layer and lora_A/lora_B are visited on their own
        if isinstance(module, torch.nn.Linear):
            n = module.weight.numel()
            if module.weight.requires_grad:
                adapter += n
            else:
                matmul += n
    config = model.config
    full = adapter > 0 and all(p.requires_grad for p in model.parameters())
    if full:  # a full fine-tune: every Linear is a "model" weight, none is an adapter
        matmul, adapter = adapter, 0
    return FlopModel(
        matmul_params=matmul,
        adapter_params=adapter,
        layers=int(config.num_hidden_layers),
        hidden=int(config.hidden_size),
        full_finetune=full,
    )


def effective_context(lengths: list[int]) -> float:
    """Token-weighted mean example length: Σℓ² / Σℓ."""
    total = sum(lengths)
    return sum(n * n for n in lengths) / total if total else 0.0


def matmul_peak(
    sizes: tuple[int, ...] = (256, 512, 1024, 2048), best_of: int = 5, min_seconds: float = 0.2
) -> dict[str, Any]:
    """Best achieved fp32 FLOP/s of square matmuls (2·n³ FLOPs each), best of `best_of`
    timed batches per size; each batch repeats the matmul for at least `min_seconds`."""
    import torch

    per_size: dict[str, float] = {}
    for n in sizes:
        a = torch.randn(n, n)
        b = torch.randn(n, n)
        out = torch.empty(n, n)
        torch.mm(a, b, out=out)  # warm up the kernel and the allocator
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        one = max(time.perf_counter() - t0, 1e-6)
        reps = max(1, int(min_seconds / one))
        best = 0.0
        for _ in range(best_of):
            t0 = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, b, out=out)
            elapsed = time.perf_counter() - t0
            best = max(best, 2.0 * n**3 * reps / elapsed)
        per_size[str(n)] = best
    return {"peak_flops": max(per_size.values()), "per_size": per_size}
