"""The backend factory: one process gets LocalBackend, and nothing imports DeepSpeed (or
its backend module) unless the config asks for it. Runs in a fresh interpreter, since
other tests in this process may have imported DeepSpeed already."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import json, sys
from finetune_runtime.config import parse_config
from finetune_runtime.train.backends.factory import create_backend
from finetune_runtime.train.loop import train  # the whole loop, as `finetune train` imports it

config = parse_config({
    "base_model": "builtin:tiny-llama",
    "datasets": [{"path": "data.jsonl", "format": "alpaca"}],
    "training": {"precision": "fp32"},
})
backend = create_backend(config, env={})
print(json.dumps({
    "backend": type(backend).__name__,
    "world_size": backend.world_size,
    "deepspeed": sorted(m for m in sys.modules if "deepspeed" in m),
}))
"""


def test_one_process_gets_the_local_backend_and_no_deepspeed_import() -> None:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(name, None)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parent,
        check=True,
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["backend"] == "LocalBackend" and seen["world_size"] == 1
    assert seen["deepspeed"] == []
