"""Find the pinned axolotl venv and run its CLI in a subprocess, offline and on CPU."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PINNED_VERSION = "0.19.0"
HERE = Path(__file__).resolve().parent


def venv_dir() -> Path:
    """$AXOLOTL_VENV, else the cached venv `make axolotl` builds."""
    return Path(os.environ.get("AXOLOTL_VENV") or ROOT / ".cache" / "axolotl-venv")


def missing_reason() -> str | None:
    """Why the axolotl venv cannot be used, or None when it can."""
    venv = venv_dir()
    python = venv / "bin" / "python"
    if not python.exists():
        return f"no axolotl venv at {venv}: run `make axolotl` (builds it, ~7 GB)"
    if not (venv / ".installed").exists():
        return f"axolotl venv at {venv} is incomplete (no .installed stamp): run `make axolotl`"
    return None


def axolotl_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """CPU only, offline, the venv's bin first on PATH (axolotl re-launches through accelerate)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(
        CUDA_VISIBLE_DEVICES="",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        AXOLOTL_DO_NOT_TRACK="1",
        DO_NOT_TRACK="1",
        WANDB_MODE="disabled",
        TOKENIZERS_PARALLELISM="false",
        PATH=f"{venv_dir() / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    env.pop("VIRTUAL_ENV", None)
    if extra:
        env.update(extra)
    return env


@dataclass
class Completed:
    args: list[str]
    returncode: int
    output: str

    def check(self) -> Completed:
        if self.returncode != 0:
            tail = "\n".join(self.output.splitlines()[-40:])
            raise RuntimeError(f"{' '.join(self.args)} exited {self.returncode}:\n{tail}")
        return self


def run_python(
    args: list[str], cwd: Path, timeout: float = 900, env: dict[str, str] | None = None
) -> Completed:
    """`python ARGS` in the axolotl venv (niced: the machine is shared)."""
    cmd = ["nice", "-n", "5", str(venv_dir() / "bin" / "python"), *args]
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=axolotl_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Completed(cmd, proc.returncode, proc.stdout)


def preprocess_many(configs: list[Path], cwd: Path, timeout: float = 3600) -> Completed:
    """Every config through axolotl's preprocess CLI entry in one process (one import)."""
    return run_python([str(HERE / "preprocess_many.py"), *map(str, configs)], cwd, timeout=timeout)


def installed_versions() -> dict[str, str]:
    """Versions of the packages that matter, as the axolotl venv has them."""
    code = (
        "import importlib.metadata as m, json; print(json.dumps({n: m.version(n) for n in "
        "['axolotl','torch','transformers','peft','datasets','accelerate','tokenizers',"
        "'bitsandbytes','trl']}))"
    )
    done = run_python(["-c", code], ROOT, timeout=120).check()
    import json

    return dict(json.loads(done.output.strip().splitlines()[-1]))
