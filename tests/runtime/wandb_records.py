"""Read a W&B run file (`run-<id>.wandb`) back, as `wandb sync` would.

wandb 0.2x writes no Python reader any more; the file is a LevelDB-style log
("W&B" magic header, 32 KiB blocks of CRC-framed chunks) of protobuf `Record`s,
parsed here with wandb's own protobuf classes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = 7  # crc32 (4), length (2), chunk type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _chunks(data: bytes) -> Iterator[bytes]:
    if data[:4] != b":W&B":
        raise ValueError("not a W&B run file")
    pos, pending = 7, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        pos += HEADER
        chunk, pos = data[pos : pos + length], pos + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""
        elif kind == 0 and length == 0:  # zero padding to the end of the block
            pos += (BLOCK - pos % BLOCK) % BLOCK


def read_run(path: Path) -> dict[str, Any]:
    """{"run": {project, entity, name, id}, "config": {...}, "history": [{key: value}]}."""
    from wandb.proto import wandb_internal_pb2 as pb

    out: dict[str, Any] = {"run": {}, "config": {}, "history": []}
    for raw in _chunks(path.read_bytes()):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            out["run"] = {
                "project": run.project,
                "entity": run.entity,
                "name": run.display_name,
                "id": run.run_id,
            }
            for item in run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "history":
            row = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json)
                for i in record.history.item
            }
            out["history"].append(row)
    return out
