"""bench/gpu.sh without a GPU: the dry run checks the whole plan; the pure parts are exact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu import lora_flop_model, peak_tflops

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_checks_the_plan_without_a_gpu(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHON=sys.executable)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "runtime"), str(ROOT / "operator"), str(ROOT)])
    proc = subprocess.run(
        [
            "bash",
            str(ROOT / "bench" / "gpu.sh"),
            "--dry-run",
            "--out",
            str(tmp_path),
            "--gpus",
            "8",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["dry_run"] is True and plan["gpus"] == 8
    runs = plan["runs"]
    assert set(runs) == {"hf_padded", "hf_flattened", "ours", "ours_zero2", "ours_zero3"}
    assert (runs["ours_zero2"]["zero_stage"], runs["ours_zero3"]["zero_stage"]) == (2, 3)
    assert runs["ours_zero3"]["argv"][:3] == ["torchrun", "--standalone", "--nproc-per-node=8"]
    assert 1.0e9 < plan["parameters"] < 1.2e9  # a ~1B Llama
    order = plan["order"]
    assert len(order) == 15 and order[:5] != order[5:10]  # 3 rounds, rotated


def test_without_cuda_a_real_run_refuses_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from bench.gpu import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the refusal only exists without one")
    assert main(["--out", "/nonexistent/never-written"]) == 2
    assert "no CUDA device here; use --dry-run" in capsys.readouterr().err


def test_analytic_flops_equal_the_counted_ones() -> None:
    """The shape-only FLOP model (used where ZeRO-3 hides the weights) counts what
    bench.flops counts on a real peft model."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from bench.flops import flop_model

    shape = dict(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=300,
    )
    model = LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=False))
    peft_model = get_peft_model(
        model, LoraConfig(r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    )
    assert lora_flop_model(shape, r=8) == flop_model(peft_model)


def test_datasheet_peaks() -> None:
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("Some Future GPU") is None
