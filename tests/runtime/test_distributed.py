"""DDP through the real launch path: `finetune launch` -> torchrun -> 2 gloo ranks.

No GPU here, so ranks run on CPU with gloo (the code picks nccl only with CUDA).
Everything else is real: processes, TCP rendezvous, signals, checkpoints on disk.
"""

from __future__ import annotations

import re
import signal
import subprocess

import pytest
from distributed_harness import (
    RUN_TIMEOUT_S,
    TwoNodeRun,
    assert_loss_falls,
    base_env,
    history,
    launch,
    launch_argv,
    output_dir,
    summary,
    terminate,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow


def test_two_nodes_rendezvous_with_the_late_node_waiting_and_train(
    ddp_reference: TwoNodeRun,
) -> None:
    run = ddp_reference
    assert run.node1_waited, run.node1.output[-3000:]
    assert "reachable after" in run.node1.output  # the gate let it through
    assert "--rdzv-backend static --node-rank 1" in run.node1.output
    result = summary(run.config)
    assert result["status"] == "completed"
    assert result["world_size"] == 2 and result["steps"] == 8
    assert result["effective_batch_size"] == 2 * 2 * 2
    hist = history(run.config)
    assert [h["step"] for h in hist] == list(range(1, 9))
    assert_loss_falls(hist)
    out = output_dir(run.config)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    # rank 0 wrote the shared training state; each rank its own RNG streams.
    ckpt = out / "checkpoint-4"
    assert (ckpt / "COMPLETE").is_file() and (ckpt / "optimizer.pt").is_file()
    assert (ckpt / "rng-rank0.pt").is_file() and (ckpt / "rng-rank1.pt").is_file()
    # Each node's rank 0 looks for the prepared data on the shared output_dir: one builds
    # it (under the lock), the other waits for the lock and maps the same files.
    built = [n.output.count("prepared the dataset cache") for n in (run.node0, run.node1)]
    assert sorted(built) == [0, 1], run.node0.output[-3000:] + run.node1.output[-3000:]
    assert (
        sum(n.output.count("reusing the prepared dataset cache") for n in (run.node0, run.node1))
        == 1
    )


def test_sigterm_to_launch_checkpoints_all_ranks_and_the_rerun_resumes(tmp_path) -> None:
    """What a pod deletion does: SIGTERM to `finetune launch` (PID 1 in the pod)."""
    config = write_config(tmp_path, "preempt", max_steps=60, save_steps=2)
    out = output_dir(config)
    log = tmp_path / "preempted.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            launch_argv(config), env=base_env(), stdout=sink, stderr=subprocess.STDOUT, text=True
        )
    try:
        wait_for(lambda: (out / "checkpoint-2" / "COMPLETE").is_file(), RUN_TIMEOUT_S, proc)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    finally:
        terminate(proc)
    text = log.read_text()
    assert code == 143, text[-4000:]
    assert "received SIGTERM: forwarding to torchrun" in text
    # Rank 0 prepared the data once while rank 1 waited at the barrier.
    assert text.count("preparing the dataset cache") == 1, text[-4000:]
    steps = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if "." not in p.name)
    stopped_at = steps[-1]
    assert 2 <= stopped_at < 60, text[-4000:]
    assert re.search(rf"stopped by SIGTERM at step {stopped_at}/60", text), text[-4000:]
    assert summary(config)["status"] == "stopped"
    assert not (out / "adapter").exists()  # final weights only after a completed run

    resumed = launch(config).check()
    result = summary(config)
    assert result["status"] == "completed" and result["steps"] == 60
    assert result["resumed_from"] == str(out / f"checkpoint-{stopped_at}")
    assert f"resumed from {out / f'checkpoint-{stopped_at}'}: step {stopped_at}" in resumed.output
    assert "reusing the prepared dataset cache" in resumed.output  # no second tokenizing
    assert [h["step"] for h in history(config)] == list(range(1, 61))
    assert_loss_falls(history(config))
