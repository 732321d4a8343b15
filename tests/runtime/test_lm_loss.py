"""The labelled-only, chunked LM loss equals the stock forward's loss and gradients."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from finetune_runtime.errors import ModelError
from finetune_runtime.train.kernels import apply_kernels, decide_kernels, install_labelled_head
from finetune_runtime.train.lm_loss import causal_lm_loss

TOL = {"rtol": 1e-4, "atol": 1e-6}  # fp32: only the summation order differs


def _batch(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, vocab, (3, 24), generator=g)
    labels = ids.clone()
    labels[:, :10] = -100  # prompt
    labels[1, 18:] = -100  # padding
    labels[2, :] = -100
    labels[2, 20] = ids[2, 20]
    mask = torch.ones_like(ids)
    mask[1, 18:] = 0
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _grads(model: Any, batch: dict[str, torch.Tensor], **kw: Any) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    out = model(**batch, **kw)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(out.loss.detach()), grads


@pytest.mark.parametrize("adapter", ["none", "lora", "lora_head"])
@pytest.mark.parametrize("num_items", [None, 7])
def test_same_loss_and_gradients_as_the_stock_forward(
    tiny_model_dir: Path, adapter: str, num_items: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fused path (plain Linear head: full fine-tune trains it, LoRA freezes it) and the
    checkpointed path (peft modules_to_save wraps the head), with and without
    num_items_in_batch, with a chunk smaller than the rows so chunking is exercised."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from finetune_runtime.train import lm_loss

    monkeypatch.setattr(lm_loss, "CHUNK_ELEMENTS", 5 * 512)  # 5 rows per chunk
    torch.manual_seed(0)
    stock = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ours = copy.deepcopy(stock)
    install_labelled_head(ours)
    if adapter != "none":
        cfg = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
        if adapter == "lora_head":
            cfg["modules_to_save"] = ["lm_head"]
        stock = get_peft_model(stock, LoraConfig(**cfg))
        torch.manual_seed(1)
        ours = get_peft_model(ours, LoraConfig(**cfg))
        ours.load_state_dict(stock.state_dict())
    batch = _batch(stock.config.vocab_size)
    kw = {} if num_items is None else {"num_items_in_batch": num_items}
    want_loss, want = _grads(stock, batch, **kw)
    got_loss, got = _grads(ours, batch, **kw)
    assert got_loss == pytest.approx(want_loss, rel=1e-5)
    assert got.keys() == want.keys() and want
    for name in want:
        torch.testing.assert_close(got[name], want[name], **TOL, msg=name)
    if adapter == "lora_head":
        assert any("lm_head" in n for n in got)


def test_chunking_and_bias_do_not_change_the_result() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=True)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    labels = torch.randint(0, 50, (2, 9))
    labels[0, :4] = -100
    ref_logits = head(hidden)[:, :-1].reshape(-1, 50)
    ref = torch.nn.functional.cross_entropy(ref_logits, labels[:, 1:].reshape(-1), reduction="sum")
    ref.backward()
    want = (hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone())
    for chunk in (1, 3, 100):
        hidden.grad = head.weight.grad = head.bias.grad = None
        loss = causal_lm_loss(hidden, labels, head, 50, num_items_in_batch=1, chunk=chunk)
        (loss * 2).backward()  # the upstream gradient scales every gradient
        torch.testing.assert_close(loss, ref.detach(), **TOL)
        for g, w in zip((hidden.grad, head.weight.grad, head.bias.grad), want, strict=True):
            torch.testing.assert_close(g, 2 * w, **TOL)


def test_bf16_autocast_matches_fp32_loosely() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(32, 300, bias=False)
    hidden = torch.randn(1, 40, 32)
    labels = torch.randint(0, 300, (1, 40))
    ref = causal_lm_loss(hidden, labels, head, 300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = causal_lm_loss(hidden, labels, head, 300)
    assert low.dtype == torch.float32
    assert float(low) == pytest.approx(float(ref), rel=1e-2)


def test_no_labelled_token_gives_a_zero_loss_with_a_graph() -> None:
    head = torch.nn.Linear(8, 20)
    hidden = torch.randn(1, 5, 8, requires_grad=True)
    loss = causal_lm_loss(hidden, torch.full((1, 5), -100), head, 20, num_items_in_batch=1)
    loss.backward()
    assert float(loss) == 0.0 and hidden.grad is not None


def test_kernel_choice() -> None:
    assert decide_kernels("auto", "cpu", liger_installed=True) == "torch"
    assert decide_kernels("auto", "cuda", liger_installed=True) == "liger"
    assert decide_kernels("auto", "cuda", liger_installed=False) == "torch"
    assert decide_kernels("none", "cpu", liger_installed=False) == "none"
    with pytest.raises(ModelError, match="training.kernels: liger needs a CUDA GPU"):
        decide_kernels("liger", "cpu", liger_installed=True)
    with pytest.raises(ModelError, match="pip install liger-kernel"):
        decide_kernels("liger", "cuda", liger_installed=False)


def test_unsupported_architectures_keep_their_forward(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config.final_logit_softcapping = 30.0
    assert apply_kernels(model, "torch", "cpu") == "none"
    assert "forward" not in vars(model)
    model.config.final_logit_softcapping = None
    assert apply_kernels(model, "auto", "cpu") == "torch"
    assert "forward" in vars(model)
    # Without labels (generation) the stock forward still returns logits.
    out = model(input_ids=torch.tensor([[1, 7, 9]]))
    assert out.logits.shape == (1, 3, model.config.vocab_size)
