"""Runtime integrity without training: locks, output_dir checks, manifests, config strictness,
resume comparison, exit codes, the CLI's broken pipe and the progress server's idle timeout.

Everything here is real (real processes holding real locks, real files, a real socket);
the training-based guarantees are in test_integrity_training.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from finetune_runtime import errors
from finetune_runtime.cli import main
from finetune_runtime.config import FineTuneConfig, parse_config, parse_config_with_warnings
from finetune_runtime.errors import ConfigError, IntegrityError, LockedError
from finetune_runtime.launch.exit_file import EXIT_FILE_ENV
from finetune_runtime.storage.integrity import MANIFEST, verify_weights, write_manifest
from finetune_runtime.storage.outdir import probe_write, unsafe_reason
from finetune_runtime.storage.output_lock import LOCK_FILE, OutputDirLock, is_stale
from finetune_runtime.train.resume_check import config_changes

DATA = Path(__file__).parent / "data" / "alpaca.jsonl"
SRC = str(Path(__file__).resolve().parents[2] / "runtime")


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- output_dir lock

HOLDER = """
import sys, time
from pathlib import Path
from finetune_runtime.storage.output_lock import OutputDirLock
OutputDirLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def _holder(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_live_holder_keeps_output_dir_and_is_named(tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = _holder(out)
    try:
        with pytest.raises(LockedError, match=f"pid {holder.pid}") as info:
            OutputDirLock(out).acquire()
        assert "in use by another run" in str(info.value)
        assert info.value.exit_code == errors.EXIT_LOCKED
        # Two runs in one process are refused too (flock is per open file).
        with OutputDirLock(tmp_path / "other"), pytest.raises(LockedError):
            OutputDirLock(tmp_path / "other").acquire()
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holders_lock_is_recovered(tmp_path: Path, caplog) -> None:
    out = tmp_path / "out"
    holder = _holder(out)
    holder.send_signal(signal.SIGKILL)  # no cleanup: the lock file stays behind
    holder.wait()
    assert (out / LOCK_FILE).is_file()
    with OutputDirLock(out):
        record = json.loads((out / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid()
    assert f"pid {holder.pid}" in caplog.text and "is gone" in caplog.text
    assert not (out / LOCK_FILE).exists()  # released cleanly: removed


def test_a_new_attempt_waits_for_the_previous_one_to_end(tmp_path: Path) -> None:
    import threading

    out = tmp_path / "out"
    holder = _holder(out)
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(OutputDirLock(out).acquire(wait_s=600)))
    waiter.start()
    holder.kill()  # the previous attempt ends while the new one waits
    holder.wait()
    waiter.join(timeout=600)
    assert got and isinstance(got[0], OutputDirLock)
    got[0].release()  # type: ignore[attr-defined]


def test_lock_wait_defaults() -> None:
    from finetune_runtime.storage.output_lock import wait_seconds

    assert wait_seconds({}) == 0  # a local `finetune train`: a busy output_dir fails at once
    assert wait_seconds({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}) == 120
    assert wait_seconds({"TORCHELASTIC_RUN_ID": "x"}) == 120
    assert wait_seconds({"FINETUNE_LOCK_WAIT": "5", "KUBERNETES_SERVICE_HOST": "h"}) == 5


def test_stale_rule_for_file_systems_without_flock() -> None:
    host = socket.gethostname()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert is_stale({"host": host, "pid": int(dead.stdout)})
    assert not is_stale({"host": host, "pid": os.getpid()})
    # Another host's holder is never presumed dead.
    assert not is_stale({"host": host + "-elsewhere", "pid": int(dead.stdout)})
    # Our pid, but a different process start time: the pid was reused, the holder is gone.
    assert is_stale({"host": host, "pid": os.getpid(), "process_start": "1"})


# --------------------------------------------------------------------------- output_dir checks


def test_system_and_home_directories_are_refused(tmp_path: Path) -> None:
    assert "system directory" in (unsafe_reason("/") or "")
    assert "system directory" in (unsafe_reason("/proc/self") or "")
    assert "system directory" in (unsafe_reason("/etc/finetune") or "")
    assert "home directory" in (unsafe_reason(tmp_path, home=str(tmp_path)) or "")
    assert unsafe_reason(tmp_path / "runs" / "a", home=str(tmp_path)) is None


def test_probe_write_finds_files_and_unwritable_places(tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    assert "not a directory" in (probe_write(afile, create=True) or "")
    assert "not a directory" in (probe_write(afile / "sub", create=False) or "")
    assert probe_write(tmp_path / "new" / "deep", create=False) is None
    assert not (tmp_path / "new").exists()  # validate leaves nothing behind
    assert probe_write(tmp_path / "new", create=True) is None
    assert list((tmp_path / "new").iterdir()) == []
    assert probe_write("/proc/finetune-out", create=True) is not None


# --------------------------------------------------------------------------- manifests


def test_manifest_detects_flipped_truncated_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "w.safetensors").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "sub" / "opt.pt").write_bytes(b"state" * 10)
    write_manifest(tmp_path, {"base_model": "m"})
    assert verify_weights(tmp_path)["identity"] == {"base_model": "m"}

    data = bytearray((tmp_path / "w.safetensors").read_bytes())
    data[100] ^= 0x01
    (tmp_path / "w.safetensors").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="SHA-256 differs"):
        verify_weights(tmp_path)
    (tmp_path / "w.safetensors").write_bytes(bytes(data[:-10]))
    with pytest.raises(IntegrityError, match="truncated"):
        verify_weights(tmp_path)
    (tmp_path / "w.safetensors").unlink()
    with pytest.raises(IntegrityError, match="missing"):
        verify_weights(tmp_path)
    (tmp_path / MANIFEST).unlink()
    assert verify_weights(tmp_path, required=False) is None
    with pytest.raises(IntegrityError, match="no finetune-manifest.json"):
        verify_weights(tmp_path)


def test_merge_refuses_an_adapter_of_another_architecture(tmp_path: Path) -> None:
    from finetune_runtime.model.merge import check_architecture

    identity = {"base_architecture": {"hidden_size": 64, "num_hidden_layers": 2}}
    check_architecture(identity, {"hidden_size": 64, "num_hidden_layers": 2}, tmp_path, "b")
    with pytest.raises(IntegrityError, match="hidden_size 64 → 256"):
        check_architecture(identity, {"hidden_size": 256, "num_hidden_layers": 2}, tmp_path, "b")


# --------------------------------------------------------------------------- resume comparison


def test_config_changes_list_result_changing_keys_only() -> None:
    base = parse_config({"base_model": "m", "datasets": [{"path": "a.jsonl"}]})
    changed = parse_config(
        {
            "base_model": "m",
            "datasets": [{"path": "a.jsonl"}],
            "seed": 1,
            "output_dir": "/elsewhere",
            "training": {"learning_rate": 0.1, "save_steps": 5, "logging_steps": 1},
        }
    )
    changes = config_changes(base.model_dump(mode="json"), changed.model_dump(mode="json"))
    assert changes == ["seed: 42 → 1", "training.learning_rate: 0.0002 → 0.1"]


# --------------------------------------------------------------------------- config strictness

FLAT = """\
base_model: builtin:tiny-llama
adapter: lora
lora_r: 8
datasets:
  - path: data.jsonl
    type: alpaca
"""


def test_flat_typo_is_an_error_with_did_you_mean() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(FLAT + "lerning_rate: 0.1\n")
    assert "lerning_rate" in str(info.value) and "did you mean 'learning_rate'" in str(info.value)
    assert info.value.issues[0].line == 7


def test_dataset_key_typo_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"datasets\[0\]\.feild.*did you mean 'field'"):
        parse_config(FLAT + "    feild: text\n")


def test_knowingly_ignored_keys_are_named_in_a_warning() -> None:
    _, warnings = parse_config_with_warnings(
        FLAT + "flash_attention: true\nhub_model_id: me/x\nearly_stopping_patience:\n"
    )
    assert any(
        "flash_attention" in w and "hub_model_id" in w and "early_stopping_patience" in w
        for w in warnings
    )


def test_every_schema_field_is_a_known_flat_key() -> None:
    """Known keys come from the pydantic models: a new field needs no allow-list edit."""
    from finetune_runtime.config.axolotl import known_flat_keys

    assert set(FineTuneConfig.model_fields) <= known_flat_keys()
    config = parse_config(FLAT + "seed: 3\ntrust_remote_code: false\n")
    assert config.seed == 3


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("learning_rate: 0.1\ntraining: {learning_rate: 0.2}\n", "conflicts with"),
        ("lora: {r: 16}\n", "conflicts with lora_r"),
        ("bf16: true\nfp16: true\n", "both on"),
        ("bf16: auto\nfp16: true\n", "both on"),
    ],
)
def test_conflicting_settings_are_errors(extra: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_config(FLAT + extra)


def test_the_same_value_twice_is_not_a_conflict() -> None:
    config = parse_config(FLAT + "learning_rate: 0.1\ntraining: {learning_rate: 0.1}\n")
    assert config.training.learning_rate == 0.1


def test_validate_reports_missing_references_as_errors(tmp_path: Path, capsys) -> None:
    config = write(
        tmp_path,
        f"""\
        base_model: ./no-such-model
        datasets:
          - path: missing.jsonl
          - path: {DATA}
        deepspeed: ./no-such-ds.json
        output_dir: /proc/finetune
        """,
    )
    code = main(["validate", str(config), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == errors.EXIT_CONFIG and not result["valid"]
    by_field = {i["field"]: i for i in result["issues"]}
    assert set(by_field) == {"base_model", "datasets[0].path", "deepspeed", "output_dir"}
    assert by_field["datasets[0].path"]["line"] == 3
    assert "not found" in by_field["deepspeed"]["message"]
    assert "system directory" in by_field["output_dir"]["message"]


# --------------------------------------------------------------------------- CLI and launch


def test_validate_json_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    config = write(tmp_path, f"base_model: builtin:tiny-llama\ndatasets: [{{path: {DATA}}}]\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "finetune_runtime.cli", "validate", str(config), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `| head` exiting before we write
    stderr = proc.stderr.read().decode()
    assert proc.wait() == 141
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_launch_reports_the_trainers_exit_code_not_torchruns(tmp_path: Path) -> None:
    """torchrun turns any worker failure into exit 1; the launcher recovers the real code.
    The child stands in for torchrun: a real process that records 8 and exits 1."""
    from finetune_runtime.commands.launch import supervise_recording_exit

    script = f"import os; open(os.environ['{EXIT_FILE_ENV}'], 'w').write('8'); raise SystemExit(1)"
    assert supervise_recording_exit([sys.executable, "-c", script], dict(os.environ)) == 8
    assert supervise_recording_exit([sys.executable, "-c", "raise SystemExit(1)"], {}) == 1


def test_launch_repeats_the_trainers_error_as_its_last_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What a failed worker's log tail (the operator's failure message) ends with: the
    trainer's own error, not torchrun's report. A real `finetune` fails on a missing config
    under a stand-in for torchrun that then exits 1, as torchrun does."""
    from finetune_runtime.commands.launch import supervise_recording_exit

    missing = tmp_path / "nope.yaml"
    script = (
        "import subprocess, sys\n"
        f"subprocess.run([sys.executable, '-m', 'finetune_runtime.cli', 'train', '{missing}'])\n"
        "raise SystemExit(1)\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    with caplog.at_level("INFO", logger="finetune_runtime"):
        assert supervise_recording_exit([sys.executable, "-c", script], env) == 2
    last = caplog.records[-1]
    assert last.levelname == "ERROR"
    assert last.getMessage().startswith("a trainer exited with 2: ")
    assert "nope.yaml" in last.getMessage()


def test_exit_codes_are_distinct_and_divergence_is_permanent() -> None:
    codes = [v for k, v in vars(errors).items() if k.startswith("EXIT_")]
    assert len(codes) == len(set(codes))
    assert errors.EXIT_DIVERGED in errors.PERMANENT_EXIT_CODES
    assert errors.EXIT_LOCKED not in errors.PERMANENT_EXIT_CODES
    assert errors.DivergedError("x").exit_code == errors.EXIT_DIVERGED == 8


# --------------------------------------------------------------------------- progress server


def test_progress_server_defaults_to_loopback_outside_a_pod() -> None:
    from finetune_runtime.commands.train import default_progress_host

    assert default_progress_host({}) == "127.0.0.1"
    assert default_progress_host({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) == "0.0.0.0"


def test_idle_progress_connections_are_closed() -> None:
    from finetune_runtime.progress.reporting import ProgressReporter
    from finetune_runtime.progress.server import ProgressServer

    with ProgressServer(ProgressReporter(10), port=0, idle_timeout=0.3) as server:
        assert server.host == "127.0.0.1"
        with socket.create_connection(("127.0.0.1", server.port)) as idle:
            idle.settimeout(60)  # a safety net only: the server closes it long before
            assert idle.recv(1) == b""  # EOF: the server gave up on the silent client


def test_the_mistral_preset_is_qlora_as_described() -> None:
    from finetune_runtime.config.presets import render_preset

    text = render_preset("mistral-7b")
    config = parse_config(text)
    assert "QLoRA" in text.split("\n\n")[0]
    assert config.adapter == "qlora" and config.quantization is not None
    assert config.quantization.bits == 4
