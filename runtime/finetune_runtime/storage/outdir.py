"""output_dir: where it is, whether it is a sane place, whether we can write there.

Rule for relative paths: a path written *in the config file* (output_dir, datasets,
base_model, deepspeed JSON) is relative to the config file's directory; a path given
*on the command line* (`--output-dir`, `--adapter`, `--output`) is relative to the
working directory, as shells expect.

`validate` and the start of `train` refuse `/`, system directories and the home
directory itself, and probe-write output_dir, so a bad output_dir fails before any
compute is spent, not at the first checkpoint.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from finetune_runtime.storage.integrity import has_manifest

# Refused as output_dir themselves.
SYSTEM_DIRS = frozenset(
    {"/", "/home", "/root", "/var", "/opt", "/run", "/tmp", "/mnt", "/media", "/srv", "/usr"}
)
# Refused as output_dir and anywhere below them.
SYSTEM_TREES = (
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/etc",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/usr/bin",
    "/usr/lib",
    "/usr/sbin",
    "/usr/share",
)
PROBE = ".finetune-write-probe"


def resolve_output_dir(output_dir: str, base_dir: Path | None) -> str:
    """A relative output_dir from a config file, anchored at the config's directory."""
    path = Path(output_dir).expanduser()
    if path.is_absolute() or base_dir is None:
        return str(path)
    return str(base_dir / path)


def unsafe_reason(output_dir: str | Path, home: str | None = None) -> str | None:
    """Why `output_dir` must not be used (a system directory, $HOME itself), else None."""
    path = Path(os.path.abspath(Path(output_dir).expanduser()))
    with contextlib.suppress(OSError):
        path = path.resolve()
    text = path.as_posix()
    home = home if home is not None else os.environ.get("HOME")
    if text in SYSTEM_DIRS:
        return f"{text} is a system directory; use a directory of its own, e.g. {text}/finetune-out"
    if any(text == tree or text.startswith(tree + "/") for tree in SYSTEM_TREES):
        return f"{text} is in a system directory; point output_dir at your own storage"
    if home and Path(home).expanduser().resolve() == path:
        return f"{text} is your home directory itself; use a directory inside it, e.g. ~/runs/x"
    return None


def probe_write(output_dir: str | Path, *, create: bool) -> str | None:
    """Write and delete a small file where the run will write; the reason it failed, or None.

    With `create`, output_dir (and its parents) is created first, as training does.
    Without it (validate), the nearest existing ancestor is probed instead, so nothing
    is left behind.
    """
    path = Path(output_dir).expanduser()
    if path.exists() and not path.is_dir():
        return f"{path} exists and is not a directory"
    target = path
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
        else:
            while not target.exists() and target != target.parent:
                target = target.parent
            if not target.is_dir():
                return f"{target} is not a directory, so {path} cannot be created"
        probe = target / f"{PROBE}-{os.getpid()}"
        with open(probe, "wb") as handle:
            handle.write(b"\0" * 4096)
            handle.flush()
            os.fsync(handle.fileno())
        probe.unlink()
    except OSError as exc:
        where = exc.filename or target
        return f"cannot write to {path}: {exc.strerror or exc} ({where})"
    return None


def check_output_dir(output_dir: str | Path, *, create: bool) -> str | None:
    """unsafe_reason, then probe_write: the first problem, or None."""
    return unsafe_reason(output_dir) or probe_write(output_dir, create=create)


def foreign_weights_dir(weights_dir: Path) -> bool:
    """True when `weights_dir` exists with files but no manifest: we did not write it."""
    if not weights_dir.exists():
        return False
    if not weights_dir.is_dir():
        return True
    return any(weights_dir.iterdir()) and not has_manifest(weights_dir)
