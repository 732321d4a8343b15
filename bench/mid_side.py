"""Side measurements beside bench 6, at its sizes and data (not part of `make bench`):

    python -m bench.mid_side ROUNDS OUT.json VARIANT,VARIANT,...

e.g. `hf_flattened_bf16,ours` (HF's padding-free path with bf16=True) or the ablations
`ours,ours_fp32,ours_kernels_none,ours_unpacked` (one default switched off at a time).
Ratios are paired per round on tokens per CPU-second, as in bench 6.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from bench.common import LoadLog
from bench.data import synthetic_rows, write_jsonl
from bench.mid import run_rounds
from bench.run import Sizes


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    rounds, out, variants = int(argv[0]), Path(argv[1]), tuple(argv[2].split(","))
    s = Sizes()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_jsonl(Path(tmp) / "synthetic.jsonl", synthetic_rows(s.synthetic_rows))
        args = {
            "data": str(data),
            "model": s.mid_model,
            "batch_size": s.mid_batch_size,
            "accumulation": s.mid_accumulation,
            "sequence_len": s.mid_sequence_len,
            "warmup": s.mid_warmup,
            "steps": s.mid_steps,
            "threads": 1,
        }
        result = run_rounds(args, rounds, LoadLog(), variants=variants)
    result["command"] = "python -m bench.mid_side " + " ".join(argv)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["variants"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
