"""A worker that records its lifetime on the checkpoint volume (gang-replacement tests).

Run as the pod's `finetune launch --config <config.yaml>` (a test puts it first on the
worker's PATH through spec.env), it stands in for the trainer where real training would
cost minutes of CPU and say nothing more about process lifetimes. It appends one JSON line
per event to `<output_dir>/ledger.jsonl` (O_APPEND: the file's order is the order of the
writes, across every process of every gang):

- `start`: attempt, rank, pid, hostname, the rendezvous address the pod got (PET_MASTER_ADDR,
  as cluster DNS answered it), for rank 0 whether the runtime's output_dir lock
  (finetune_runtime.storage.output_lock, kernel flock) was free, and `overlapping`: processes of
  another attempt still alive at this start (from earlier start lines, pid + start time);
- `beat` every 0.1 s while alive: the writes a trainer makes to the checkpoint volume;
- on SIGTERM, `term`; then it keeps running (and writing) until the test creates
  `<output_dir>/release`, as a trainer finishing its step and checkpoint would, then `stop`
  and exit 143. A process named in $RECORDER_IGNORE_TERM (`a1-r1,...`) records
  `term-ignored` and runs on until the kubelet's SIGKILL;
- on SIGUSR1, `fail` and exit 1 (a worker failure);
- `stop` and exit 0 once `<output_dir>/finish-a<attempt>` exists.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from finetune_runtime.errors import LockedError
from finetune_runtime.storage.output_lock import OutputDirLock

LEDGER = "ledger.jsonl"


class Recorder:
    def __init__(self, output_dir: Path) -> None:
        self.out = output_dir
        self.attempt = int(os.environ["FINETUNE_ATTEMPT"])
        self.rank = int(os.environ["PET_NODE_RANK"])
        self.who = f"a{self.attempt}-r{self.rank}"
        self.terminating = False
        self.lock: OutputDirLock | None = None

    def record(self, event: str, **extra: Any) -> None:
        line = {"event": event, "who": self.who, "attempt": self.attempt, "pid": os.getpid()}
        data = (json.dumps({**line, **extra}) + "\n").encode()
        fd = os.open(self.out / LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def alive_elsewhere(self) -> list[str]:
        """Processes of other attempts, from earlier start lines, still running now."""
        path = self.out / LEDGER
        lines = path.read_text().splitlines() if path.exists() else []
        out = []
        for raw in lines:
            seen = json.loads(raw)
            if seen["event"] != "start" or seen["attempt"] == self.attempt:
                continue
            try:
                same = psutil.Process(seen["pid"]).create_time() == seen["created"]
            except psutil.Error:
                continue
            if same:
                out.append(seen["who"])
        return out

    def start(self) -> None:
        lock = "not taken (rank > 0)"
        if self.rank == 0:  # as finetune train does: rank 0 holds output_dir's lock
            try:
                self.lock = OutputDirLock(self.out).acquire(wait_s=0)
                lock = "held"
            except LockedError as exc:
                lock = f"busy: {exc}"
        self.record(
            "start",
            rank=self.rank,
            created=psutil.Process().create_time(),
            host=os.environ.get("HOSTNAME"),
            master=os.environ.get("PET_MASTER_ADDR"),
            lock=lock,
            overlapping=self.alive_elsewhere(),
        )

    def on_term(self, *_: Any) -> None:
        ignored = self.who in os.environ.get("RECORDER_IGNORE_TERM", "").split(",")
        self.record("term-ignored" if ignored else "term")
        self.terminating = self.terminating or not ignored

    def on_usr1(self, *_: Any) -> None:
        self.record("fail")
        sys.exit(1)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_term)
        signal.signal(signal.SIGUSR1, self.on_usr1)
        self.start()
        while True:
            if self.terminating and (self.out / "release").exists():
                self.record("stop", code=143)
                return 143
            if (self.out / f"finish-a{self.attempt}").exists():
                self.record("stop", code=0)
                return 0
            self.record("beat")
            time.sleep(0.1)


def main(argv: list[str]) -> int:
    config = Path(argv[argv.index("--config") + 1])
    output_dir = Path(yaml.safe_load(config.read_text())["output_dir"])
    return Recorder(output_dir).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
