"""One optimizer step, piece by piece: accumulation, clipping, optimizers, schedules.

Real torch on the tiny Llama (CPU, fp32). The DDP case uses a real one-process
gloo group.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, get_args

import pytest
import torch
from train_helpers import free_port, tiny_config

from finetune_runtime.config import OptimizerType, SchedulerType, TrainingSettings
from finetune_runtime.train.backends.base import BackendOptions
from finetune_runtime.train.backends.local import DDPBackend, LocalBackend
from finetune_runtime.train.batches import loss_tokens
from finetune_runtime.train.optim import build_optimizer, build_scheduler, param_groups
from finetune_runtime.train.step import accumulate_window


@pytest.fixture(scope="module")
def examples(tiny_model_dir: Path, tiny_tokenizer: Any, tmp_path_factory) -> list[dict]:
    """Four tokenized Alpaca rows of different lengths (so padding differs per split)."""
    from finetune_runtime.data import build_datasets

    config = tiny_config(tmp_path_factory.mktemp("steps"), rows=4)
    bundle = build_datasets(config, tiny_tokenizer)
    rows = list(bundle.train)
    assert len({len(r["input_ids"]) for r in rows}) > 1
    return rows


def full_model(tiny_model_dir: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


def collate(tokenizer, config, rows):
    from finetune_runtime.data import make_collator

    return make_collator(tokenizer, config)(rows)


def test_accumulation_matches_one_big_batch(
    tiny_model_dir: Path, tiny_tokenizer: Any, examples: list[dict], tmp_path: Path
) -> None:
    """batch 4 x accum 1 gives the same gradient as batch 2 x accum 2 (token-weighted)."""
    config = tiny_config(tmp_path)
    model = full_model(tiny_model_dir)
    model.train()
    backend = LocalBackend(BackendOptions(gradient_accumulation_steps=2))
    backend.prepare(model, None, None)

    big = [collate(tiny_tokenizer, config, examples)]
    split = [collate(tiny_tokenizer, config, rows) for rows in (examples[:2], examples[2:])]
    assert loss_tokens(big[0]) == sum(loss_tokens(b) for b in split)
    assert loss_tokens(split[0]) != loss_tokens(split[1])  # a plain mean of means would differ

    model.zero_grad(set_to_none=True)
    loss_big = accumulate_window(model, backend, big)
    g_big = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    loss_split = accumulate_window(model, backend, split)
    g_split = {n: p.grad.clone() for n, p in model.named_parameters()}

    assert loss_big == pytest.approx(loss_split, rel=1e-5)
    # The step loss is the token mean, as the model itself computes it on the big batch.
    with torch.no_grad():
        reference = model(**big[0]).loss.item()
    assert loss_big == pytest.approx(reference, rel=1e-5)
    assert g_big.keys() == g_split.keys()
    for name in g_big:
        torch.testing.assert_close(g_split[name], g_big[name], rtol=1e-4, atol=1e-6, msg=name)


def test_ddp_backend_single_rank_matches_local(
    tiny_model_dir: Path, tiny_tokenizer: Any, examples: list[dict], tmp_path: Path, monkeypatch
) -> None:
    """A real gloo group of one: DDP's no_sync accumulation yields the local gradient."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    config = tiny_config(tmp_path)
    split = [collate(tiny_tokenizer, config, rows) for rows in (examples[:2], examples[2:])]

    local_model = full_model(tiny_model_dir)
    local = LocalBackend(BackendOptions())
    local.prepare(local_model, None, None)
    accumulate_window(local_model, local, split)

    ddp = DDPBackend(BackendOptions(), env={"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"})
    try:
        ddp_model = full_model(tiny_model_dir)
        wrapped, _, _ = ddp.prepare(ddp_model, None, None)
        assert ddp.unwrap() is ddp_model and wrapped is not ddp_model
        assert ddp.all_reduce_sum(2.5) == 2.5 and ddp.all_reduce_mean(3.0) == 3.0
        accumulate_window(wrapped, ddp, split)
        ddp.barrier()
    finally:
        ddp.close()
    for (name, a), (_, b) in zip(
        local_model.named_parameters(), ddp_model.named_parameters(), strict=True
    ):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=name)


def _linear_with_grad(norm: float) -> tuple[torch.nn.Linear, torch.Tensor]:
    layer = torch.nn.Linear(4, 4, bias=False)
    grad = torch.ones(4, 4)
    grad *= norm / grad.norm()
    layer.weight.grad = grad.clone()
    return layer, grad


@pytest.mark.parametrize(("max_norm", "expected_update"), [(0.5, 0.5), (None, 10.0), (20.0, 10.0)])
def test_clipping(max_norm: float | None, expected_update: float) -> None:
    layer, _ = _linear_with_grad(10.0)
    before = layer.weight.detach().clone()
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    backend = LocalBackend(BackendOptions(max_grad_norm=max_norm))
    backend.prepare(layer, optimizer, None)
    norm = backend.step()
    assert norm == pytest.approx(10.0, rel=1e-5)  # the pre-clip norm is reported
    update = (before - layer.weight.detach()).norm().item()
    assert update == pytest.approx(expected_update, rel=1e-5)
    assert layer.weight.grad is None  # zero_grad(set_to_none=True) ran


def test_backend_steps_the_scheduler(tmp_path: Path) -> None:
    layer, _ = _linear_with_grad(1.0)
    training = TrainingSettings(scheduler="linear", warmup_steps=2, learning_rate=1.0)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    scheduler = build_scheduler(training, optimizer, total_steps=4, warmup=2)
    backend = LocalBackend(BackendOptions())
    backend.prepare(layer, optimizer, scheduler)
    seen = []
    for _ in range(4):
        seen.append(scheduler.get_last_lr()[0])
        layer.weight.grad = torch.ones(4, 4)
        backend.step()
    assert seen == pytest.approx([0.0, 0.5, 1.0, 0.5])


@pytest.mark.parametrize("name", get_args(SchedulerType))
def test_every_scheduler_warms_up_then_never_exceeds_peak(name: str) -> None:
    layer = torch.nn.Linear(2, 2)
    total, warmup = 20, 5
    training = TrainingSettings(scheduler=name, learning_rate=1.0)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    scheduler = build_scheduler(training, optimizer, total, warmup)
    lrs = []
    for _ in range(total):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert max(lrs) == pytest.approx(1.0)
    if name == "constant":  # transformers' constant schedule has no warmup
        assert lrs == pytest.approx([1.0] * total)
        return
    ramp = lrs[: warmup + 1]
    assert ramp == pytest.approx([i / warmup for i in range(warmup + 1)])
    if name not in ("constant_with_warmup", "inverse_sqrt"):
        after = lrs[warmup:]
        assert all(b <= a + 1e-9 for a, b in zip(after, after[1:], strict=False)), after
        assert lrs[-1] < 1.0


@pytest.mark.parametrize("name", get_args(OptimizerType))
def test_every_optimizer_steps_and_round_trips(name: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.LayerNorm(64))
    training = TrainingSettings(optimizer=name, learning_rate=1e-2, weight_decay=0.1)
    optimizer = build_optimizer(training, model)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(3, 64)).pow(2).sum().backward()
    optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    state = optimizer.state_dict()
    again = build_optimizer(training, model)
    again.load_state_dict(state)
    assert len(again.state_dict()["state"]) == len(state["state"])


def test_param_groups_skip_decay_for_vectors() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    groups = param_groups(model, 0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert [len(g["params"]) for g in groups] == [1, 3]  # weight | bias, norm weight, norm bias
    model.requires_grad_(False)
    with pytest.raises(Exception, match="no trainable parameters"):
        param_groups(model, 0.1)


def test_loss_tokens_follow_the_shift() -> None:
    labels = torch.tensor([[-100, 5, 6, -100], [-100, -100, 7, 8]])
    assert loss_tokens({"labels": labels}) == 4
    assert math.isclose(loss_tokens({"labels": labels[:, :2]}), 1)
