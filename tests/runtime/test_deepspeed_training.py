"""DeepSpeed ZeRO for real: `finetune launch` -> torchrun -> 2 ranks training the tiny Llama.

There is no GPU here: DeepSpeed runs with its CPU accelerator and gloo (its first
run JIT-builds a small shared-memory op with gcc). Everything else is DeepSpeed's
real engine: partitioned optimizer state (stage 1/2), partitioned parameters
(stage 3), CPU offload, sharded checkpoints.

Every DeepSpeed run is compared step by step with the DDP reference run (same data,
same seed, same world size): the losses, learning rates and pre-clip gradient norms
must agree, which checks that gradients are scaled, reduced and clipped the same way.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_harness import (
    TwoNodeRun,
    adapter_weights,
    assert_loss_falls,
    assert_same_history,
    base_env,
    forget_after,
    history,
    launch,
    max_abs_diff,
    output_dir,
    summary,
    write_config,
)

pytestmark = pytest.mark.slow


def check_resume_from(config: Path, step: int, first_history: list[dict], first_adapter) -> None:
    """Drop everything after checkpoint-<step>, rerun: it must continue exactly there."""
    forget_after(config, step)
    run = launch(config).check()
    out = output_dir(config)
    assert f"resumed from {out / f'checkpoint-{step}'}: step {step}" in run.output
    result = summary(config)
    assert result["resumed_from"] == str(out / f"checkpoint-{step}")
    assert result["steps"] == first_history[-1]["step"]
    assert_same_history(history(config), first_history, tol=1e-5)
    assert max_abs_diff(adapter_weights(config), first_adapter) < 1e-6


def test_zero2_matches_ddp_checkpoints_and_resumes(
    tmp_path: Path,
    ddp_reference: TwoNodeRun,
) -> None:
    config = write_config(tmp_path, "zero2", deepspeed="zero2")
    run = launch(config).check()
    assert "DeepSpeed ZeRO stage 2 on 2 process(es), fp32, optimizer AdamW" in run.output
    hist = history(config)
    assert_same_history(hist, history(ddp_reference.config))
    assert_loss_falls(hist)
    adapter = adapter_weights(config)
    assert max_abs_diff(adapter, adapter_weights(ddp_reference.config)) < 1e-5

    ckpt = output_dir(config) / "checkpoint-4"
    assert (ckpt / "COMPLETE").is_file()
    shards = sorted(p.name for p in (ckpt / "deepspeed").iterdir())
    assert shards == [
        "mp_rank_00_model_states.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    manifest = json.loads((ckpt / "deepspeed_trainable.json").read_text())
    assert manifest["world_size"] == 2 and len(manifest["trainable"]) == 8  # 2 layers x q,v x A,B
    assert (ckpt / "adapter" / "adapter_model.safetensors").is_file()
    # LoRA: the frozen base model is not part of the training state.
    model_states = torch.load(
        ckpt / "deepspeed" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False
    )
    assert set(model_states["module"]) == set(manifest["trainable"])

    check_resume_from(config, 4, hist, adapter)

    # A ZeRO checkpoint is sharded per rank: resuming with another world size is refused,
    # clearly. (`finetune train` without torchrun: DeepSpeed with a world size of 1.)
    refused = subprocess.run(
        [sys.executable, "-m", "finetune_runtime.cli", "train", str(config)],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 5, refused.stderr[-3000:]
    assert "written by 2 processes, resuming with 1" in refused.stderr


def test_zero3_consolidates_weights_resumes_and_merges(
    tmp_path: Path,
    ddp_reference: TwoNodeRun,
) -> None:
    # An inline dict (the third way to give `deepspeed`); persistence threshold 0 so that
    # even the small LoRA matrices are partitioned rather than replicated.
    zero3 = {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
    config = write_config(tmp_path, "zero3", deepspeed=zero3)
    run = launch(config).check()
    assert "DeepSpeed ZeRO stage 3 on 2 process(es)" in run.output
    hist = history(config)
    assert_same_history(hist, history(ddp_reference.config))
    assert_loss_falls(hist)
    # Parameters are partitioned across the ranks while training; the saved adapter must
    # be the gathered, full tensors.
    adapter = adapter_weights(config)
    assert max_abs_diff(adapter, adapter_weights(ddp_reference.config)) < 1e-5
    assert all(t.numel() > 0 for t in adapter.values())
    ckpt = output_dir(config) / "checkpoint-4" / "deepspeed"
    trainable = 3584  # 2 layers x (q, v) x (A 8x64 + B 64x8)
    for rank in (0, 1):
        module = torch.load(
            ckpt / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt", weights_only=False
        )["module"]
        assert all(t.numel() == 0 for t in module.values())  # only placeholders: partitioned
        optim = torch.load(
            ckpt / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt", weights_only=False
        )["optimizer_state_dict"]
        assert sum(t.numel() for t in optim["fp32_flat_groups"]) == trainable // 2
    check_resume_from(config, 4, hist, adapter)

    merged_dir = tmp_path / "merged"
    merge = subprocess.run(
        [
            sys.executable,
            "-m",
            "finetune_runtime.cli",
            "merge",
            str(config),
            "--output",
            str(merged_dir),
        ],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert merge.returncode == 0, merge.stderr[-3000:]
    assert_merged_equals_base_plus_adapter(merged_dir, output_dir(config) / "adapter")


def assert_merged_equals_base_plus_adapter(merged_dir: Path, adapter_dir: Path) -> None:
    """`finetune merge` output == base model + adapter, and != the bare base model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from finetune_runtime.model.tiny import resolve_builtin

    ids = torch.arange(5, 45).reshape(2, 20)
    base = AutoModelForCausalLM.from_pretrained(resolve_builtin("builtin:tiny-llama")).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
    with torch.no_grad():
        plain = base(input_ids=ids).logits
        got = merged(input_ids=ids).logits
        want = PeftModel.from_pretrained(base, str(adapter_dir)).eval()(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-3)


def test_zero2_optimizer_offload_with_deepspeed_cpu_adam_trains_like_ddp(
    tmp_path: Path,
    ddp_reference: TwoNodeRun,
) -> None:
    """Optimizer state offloaded to CPU; with FINETUNE_DS_CPU_ADAM=1 the loop's AdamW is
    swapped for DeepSpeed's vectorised CPU Adam (a C++ op compiled on first use, about a
    minute here, then cached). Its arithmetic differs in the last bits: looser tolerance."""
    config = write_config(tmp_path, "offload", deepspeed="zero2_offload", save_steps=8)
    run = launch(config, env=base_env(FINETUNE_DS_CPU_ADAM="1")).check()
    assert "optimizer DeepSpeedCPUAdam" in run.output
    hist = history(config)
    assert_same_history(hist, history(ddp_reference.config), tol=1e-3)
    assert (output_dir(config) / "adapter" / "adapter_model.safetensors").is_file()


def test_full_fine_tune_with_zero3_parameter_offload_writes_a_loadable_model(
    tmp_path: Path,
) -> None:
    """adapter: none under zero3_offload: every weight is partitioned, offloaded to CPU
    and trained with the loop's AdamW; the exported model must be complete (gathered
    from both ranks) and load with transformers."""
    from transformers import AutoModelForCausalLM

    config = write_config(
        tmp_path, "full", deepspeed="zero3_offload", adapter="none", max_steps=4, save_steps=4
    )
    run = launch(config, env=base_env(FINETUNE_DS_CPU_ADAM="0")).check()
    assert "DeepSpeed ZeRO stage 3 on 2 process(es), fp32, optimizer AdamW" in run.output
    assert_loss_falls(history(config))
    model_dir = output_dir(config) / "model"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    from finetune_runtime.model.tiny import resolve_builtin

    base = AutoModelForCausalLM.from_pretrained(resolve_builtin("builtin:tiny-llama"))
    trained = dict(model.named_parameters())
    changed = [n for n, p in base.named_parameters() if not torch.equal(p, trained[n])]
    assert len(changed) == len(trained)  # every tensor was gathered and updated
