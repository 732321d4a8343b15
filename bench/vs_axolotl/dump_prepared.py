"""Runs inside the axolotl venv: `python dump_prepared.py PREPARED_DIR OUT.jsonl`.

axolotl saves its tokenized dataset with `datasets.save_to_disk` under
`dataset_prepared_path/<hash>/`; this writes every row's token columns as JSON lines
so our venv (which has no `datasets`) can compare them. Rows keep axolotl's order.
"""

import json
import sys
from pathlib import Path

from datasets import load_from_disk

COLUMNS = ("input_ids", "labels", "attention_mask", "position_ids")


def main(prepared: str, out: str) -> int:
    dirs = sorted(p.parent for p in Path(prepared).rglob("dataset_info.json"))
    if len(dirs) != 1:
        print(f"expected one prepared dataset under {prepared}, found {dirs}", file=sys.stderr)
        return 2
    ds = load_from_disk(str(dirs[0]))
    with open(out, "w", encoding="utf-8") as f:
        for row in ds:
            f.write(json.dumps({k: list(row[k]) for k in COLUMNS if k in row}) + "\n")
    print(f"{len(ds)} rows from {dirs[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
