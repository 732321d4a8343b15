"""A builtin model built by a rank > 0 (another node of a gang, with its own cache) is complete.

transformers' `save_pretrained` writes weights on global rank 0 only once torch.distributed
is initialised; the builtin builder must not depend on it, or node 1 of a gang publishes a
model directory without weights and fails with "Unrecognized model".
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = """
import json, os, sys
import torch.distributed as dist
rank, port, cache = int(sys.argv[1]), sys.argv[2], sys.argv[3]
os.environ["FINETUNE_CACHE"] = cache
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
from finetune_runtime.model.tiny import resolve_builtin
from transformers import AutoModelForCausalLM
path = resolve_builtin("builtin:tiny-llama")
model = AutoModelForCausalLM.from_pretrained(path)
total = float(sum(p.detach().double().sum() for p in model.parameters()))
print(json.dumps({"files": sorted(p.name for p in path.iterdir()), "total": total}))
dist.barrier()
dist.destroy_process_group()
"""


def test_every_rank_builds_a_complete_model_in_its_own_cache(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(rank), port, str(tmp_path / f"node{rank}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    for result in results:
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(result["files"])
    assert results[0]["total"] == results[1]["total"]  # the same model on every node
