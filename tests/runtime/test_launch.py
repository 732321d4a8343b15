"""`finetune launch`: torchrun arguments from the env contract, the CLI, signal forwarding."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from finetune_runtime.cli import main
from finetune_runtime.commands.launch import check_config, supervise
from finetune_runtime.errors import LaunchError
from finetune_runtime.launch.torchrun import launch_command, resolve_plan, torchrun_args

VALID_CONFIG = "base_model: builtin:tiny-llama\ndatasets: [{path: data.jsonl}]\n"


def no_gpu() -> int:
    return 0


def four_gpus() -> int:
    return 4


def args_for(env: dict[str, str], extra: tuple[str, ...] = ()) -> list[str]:
    return torchrun_args(env, "/etc/finetune/config.yaml", extra, gpu_count=no_gpu)


def opt(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


# --------------------------------------------------------------------------- the env contract


def test_kubeflow_pet_env_gives_static_rendezvous_on_node_0() -> None:
    env = {
        "PET_NNODES": "2",
        "PET_NODE_RANK": "0",
        "PET_NPROC_PER_NODE": "4",
        "PET_MASTER_ADDR": "job-worker-0.job.ns.svc",
        "PET_MASTER_PORT": "29500",
    }
    args = args_for(env, ("--max-steps", "5"))
    assert args == [
        "--nnodes",
        "2",
        "--nproc-per-node",
        "4",
        "--rdzv-backend",
        "static",
        "--node-rank",
        "0",
        "--master-addr",
        "job-worker-0.job.ns.svc",
        "--master-port",
        "29500",
        "--max-restarts",
        "0",
        "-m",
        "finetune_runtime.cli",
        "train",
        "/etc/finetune/config.yaml",
        "--max-steps",
        "5",
    ]
    plan = resolve_plan(env, no_gpu)
    assert plan.world_size == 8 and not plan.waits_for_master


def test_other_nodes_wait_for_the_master() -> None:
    env = {
        "PET_NNODES": "3",
        "PET_NODE_RANK": "2",
        "PET_MASTER_ADDR": "m",
        "PET_NPROC_PER_NODE": "1",
    }
    plan = resolve_plan(env, no_gpu)
    assert plan.node_rank == 2 and plan.waits_for_master


def test_plain_fallbacks_are_read_when_pet_vars_are_absent() -> None:
    env = {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "23456"}
    args = args_for(env)
    assert (opt(args, "--nnodes"), opt(args, "--node-rank")) == ("2", "1")
    assert (opt(args, "--master-addr"), opt(args, "--master-port")) == ("10.0.0.5", "23456")


def test_pet_vars_win_over_plain_ones() -> None:
    env = {
        "PET_NNODES": "2",
        "NNODES": "9",
        "PET_MASTER_ADDR": "pet-master",
        "MASTER_ADDR": "plain-master",
        "PET_MASTER_PORT": "1234",
        "MASTER_PORT": "4321",
    }
    args = args_for(env)
    assert opt(args, "--nnodes") == "2"
    assert opt(args, "--master-addr") == "pet-master"
    assert opt(args, "--master-port") == "1234"


def test_kubeflow_legacy_world_size_and_rank_describe_pods() -> None:
    # Kubeflow's non-elastic env: WORLD_SIZE = pods, RANK = this pod's index.
    env = {"WORLD_SIZE": "4", "RANK": "3", "MASTER_ADDR": "m", "MASTER_PORT": "29500"}
    plan = resolve_plan(env, no_gpu)
    assert (plan.nnodes, plan.node_rank, plan.nproc_per_node) == (4, 3, 1)


def test_world_size_as_process_count_is_divided_by_nproc() -> None:
    env = {"WORLD_SIZE": "8", "PET_NPROC_PER_NODE": "4", "MASTER_ADDR": "m"}
    assert resolve_plan(env, no_gpu).nnodes == 2


def test_world_size_may_count_pods_or_processes_but_must_match_one() -> None:
    base = {"PET_NNODES": "2", "PET_NPROC_PER_NODE": "4", "PET_MASTER_ADDR": "m"}
    assert resolve_plan({**base, "WORLD_SIZE": "2"}, no_gpu).world_size == 8
    assert resolve_plan({**base, "WORLD_SIZE": "8"}, no_gpu).world_size == 8
    with pytest.raises(LaunchError, match=r"WORLD_SIZE=5 matches neither PET_NNODES=2"):
        resolve_plan({**base, "WORLD_SIZE": "5"}, no_gpu)


def test_world_size_not_a_multiple_of_nproc_is_rejected() -> None:
    with pytest.raises(LaunchError, match="WORLD_SIZE=6 is not a multiple of nproc-per-node=4"):
        resolve_plan({"WORLD_SIZE": "6", "PET_NPROC_PER_NODE": "4", "MASTER_ADDR": "m"}, no_gpu)


def test_single_node_without_address_runs_standalone() -> None:
    args = args_for({})
    assert "--standalone" in args
    assert "--master-addr" not in args and "--node-rank" not in args
    assert opt(args, "--nnodes") == "1" and opt(args, "--nproc-per-node") == "1"


def test_single_node_with_port_only_listens_locally() -> None:
    args = args_for({"MASTER_PORT": "29999"})
    assert opt(args, "--master-addr") == "127.0.0.1" and opt(args, "--master-port") == "29999"


@pytest.mark.parametrize("value", ["auto", "gpu", "AUTO"])
def test_nproc_auto_counts_gpus_or_one_on_cpu(value: str) -> None:
    env = {"PET_NPROC_PER_NODE": value}
    assert resolve_plan(env, four_gpus).nproc_per_node == 4
    assert resolve_plan(env, no_gpu).nproc_per_node == 1


def test_nproc_defaults_to_auto() -> None:
    assert resolve_plan({}, four_gpus).nproc_per_node == 4


def test_elastic_range_with_equal_bounds_is_a_fixed_size() -> None:
    assert resolve_plan({"PET_NNODES": "2:2", "PET_MASTER_ADDR": "m"}, no_gpu).nnodes == 2


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PET_NNODES": "2", "PET_NODE_RANK": "2", "PET_MASTER_ADDR": "m"}, "PET_NODE_RANK=2 but"),
        ({"PET_NNODES": "2", "PET_NODE_RANK": "0"}, "2 nodes need a master address"),
        ({"PET_NNODES": "two"}, "PET_NNODES='two' is not a whole number"),
        ({"PET_NNODES": "0"}, "PET_NNODES='0' must be at least 1"),
        ({"PET_NODE_RANK": "-1"}, "PET_NODE_RANK='-1' must be at least 0"),
        ({"PET_NPROC_PER_NODE": "lots"}, "PET_NPROC_PER_NODE='lots' is not a whole number"),
        ({"PET_NPROC_PER_NODE": "0"}, "must be at least 1"),
        ({"PET_MASTER_PORT": "http"}, "PET_MASTER_PORT='http' is not a whole number"),
        ({"PET_MASTER_PORT": "70000"}, "PET_MASTER_PORT=70000 is not a TCP port"),
        ({"PET_NNODES": "1:4", "PET_MASTER_ADDR": "m"}, "asks for elastic training"),
        ({"WORLD_SIZE": "x"}, "WORLD_SIZE='x' is not a whole number"),
        ({"NODE_RANK": "3", "NNODES": "1"}, "NODE_RANK=3 but the gang has 1 node"),
    ],
)
def test_inconsistent_env_is_a_clear_launch_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(LaunchError, match=message.replace("(", r"\(")):
        resolve_plan(env, no_gpu)


def test_blank_values_count_as_unset() -> None:
    plan = resolve_plan({"PET_NNODES": " ", "NNODES": "", "PET_MASTER_ADDR": ""}, no_gpu)
    assert plan.nnodes == 1 and plan.standalone


def test_missing_config_path_is_rejected() -> None:
    with pytest.raises(LaunchError, match="--config"):
        torchrun_args({}, "", gpu_count=no_gpu)


def test_launch_command_runs_torch_launcher_with_this_interpreter() -> None:
    cmd = launch_command(["--nnodes", "1"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]


# --------------------------------------------------------------------------- the CLI


def test_cli_dry_run_prints_the_command_with_train_args(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("PET_NNODES", "NNODES", "WORLD_SIZE", "RANK", "NODE_RANK", "PET_NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PET_MASTER_ADDR", "w0.job")
    monkeypatch.setenv("PET_MASTER_PORT", "29511")
    code = main(
        [
            "launch",
            "--config",
            "cfg.yaml",
            "--nproc-per-node",
            "2",
            "--dry-run",
            "--",
            "--max-steps",
            "3",
        ]
    )
    out = capsys.readouterr().out.strip()
    assert code == 0
    assert "-m torch.distributed.run --nnodes 1 --nproc-per-node 2" in out
    assert "--master-addr w0.job --master-port 29511" in out
    assert out.endswith("-m finetune_runtime.cli train cfg.yaml --max-steps 3")


def test_cli_reports_bad_env_with_launch_exit_code(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PET_NNODES", "2")
    monkeypatch.delenv("PET_MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert main(["launch", "--config", "cfg.yaml", "--dry-run"]) == LaunchError.exit_code
    assert "need a master address" in capsys.readouterr().err


def test_cli_refuses_a_missing_config_before_starting_torchrun(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PET_NNODES", raising=False)
    code = main(["launch", "--config", str(tmp_path / "nope.yaml"), "--nproc-per-node", "1"])
    assert code == LaunchError.exit_code
    assert "config file not found" in capsys.readouterr().err


def test_cli_rejects_a_bad_rendezvous_timeout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(VALID_CONFIG)
    monkeypatch.setenv("FINETUNE_RENDEZVOUS_TIMEOUT", "soon")
    code = main(
        [
            "launch",
            "--config",
            str(config),
            "--nnodes",
            "2",
            "--node-rank",
            "1",
            "--master-addr",
            "127.0.0.1",
        ]
    )
    assert code == LaunchError.exit_code
    assert "FINETUNE_RENDEZVOUS_TIMEOUT='soon' is not a number" in capsys.readouterr().err


# --------------------------------------------------------------------------- signal forwarding

TRAPPER = textwrap.dedent(
    """
    import signal, sys, time, pathlib
    marker = pathlib.Path(sys.argv[1])
    def on_term(signum, frame):
        marker.write_text(f"got {signum}")
        sys.exit(int(sys.argv[2]))
    signal.signal(signal.SIGTERM, on_term)
    marker.with_suffix(".ready").write_text("ready")
    while True:
        time.sleep(0.05)
    """
)


def _run_supervisor(tmp_path: Path, child_exit: int) -> tuple[int, str]:
    """Run `supervise` in a subprocess (it installs signal handlers), SIGTERM it."""
    script = tmp_path / "trapper.py"
    script.write_text(TRAPPER)
    marker = tmp_path / "marker.txt"
    driver = (
        "import sys; from finetune_runtime.commands.launch import check_config, supervise; "
        f"sys.exit(supervise([sys.executable, {str(script)!r}, {str(marker)!r}, "
        f"'{child_exit}'], dict(__import__('os').environ)))"
    )
    proc = subprocess.Popen([sys.executable, "-c", driver])
    ready = marker.with_suffix(".ready")
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, "supervisor exited before its child was ready"
        assert time.monotonic() < deadline, "child never became ready"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    return code, marker.read_text() if marker.exists() else ""


def test_sigterm_is_forwarded_and_a_failed_child_reports_preemption(tmp_path: Path) -> None:
    code, marker = _run_supervisor(tmp_path, child_exit=1)
    assert marker == f"got {int(signal.SIGTERM)}"
    assert code == 128 + signal.SIGTERM


def test_child_that_exits_cleanly_after_sigterm_keeps_code_zero(tmp_path: Path) -> None:
    code, marker = _run_supervisor(tmp_path, child_exit=0)
    assert marker.startswith("got")
    assert code == 0


def test_supervise_returns_the_child_exit_code() -> None:
    env = dict(os.environ)
    assert supervise([sys.executable, "-c", "raise SystemExit(3)"], env) == 3
    assert supervise([sys.executable, "-c", "pass"], env) == 0


def test_a_child_killed_by_a_signal_maps_to_128_plus_signal() -> None:
    cmd = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    assert supervise(cmd, dict(os.environ)) == 128 + signal.SIGKILL


def test_cli_checks_the_config_once_before_starting_torchrun(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("base_model: builtin:tiny-llama\ndatasets: [{path: d.jsonl}]\nlora_r: -1\n")
    code = main(["launch", "--config", str(config), "--nproc-per-node", "1"])
    assert code == 2  # ConfigError
    assert f"{config}:3: lora_r:" in capsys.readouterr().err


def test_cli_checks_deepspeed_against_the_real_world_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ds.json").write_text('{"train_batch_size": 4, "zero_optimization": {"stage": 2}}')
    config = tmp_path / "c.yaml"
    config.write_text(VALID_CONFIG + "deepspeed: ds.json\ntraining: {batch_size: 2}\n")
    check_config(str(config), world_size=2)  # 2 ranks x micro-batch 2 = 4: consistent
    # On 4 ranks the explicit 4 contradicts 2 x 4 = 8: refused before torchrun starts.
    assert main(["launch", "--config", str(config), "--nproc-per-node", "4"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'ds.json'}: train_batch_size: is 4 but" in err
