"""Prepare once, train many times: find or build the prepared dataset cache.

`prepare` (the `finetune preprocess` command) builds the cache for a config, or
says it is already there. `prepared_datasets` (the trainer) does the same on
local rank 0 while the other ranks wait at a barrier, then every rank maps the
same files. Two processes preparing the same key (two nodes on one volume, two
jobs) serialize on a lock file; the loser finds the cache complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_runtime.config import FineTuneConfig
from finetune_runtime.data.cache import (
    CacheWriter,
    MappedDataset,
    cache_key,
    changed_inputs,
    is_complete,
    read_meta,
)
from finetune_runtime.data.pipeline import DatasetBundle, DataStats, stream_datasets
from finetune_runtime.data.sources import Source, open_source
from finetune_runtime.errors import DatasetError, FinetuneError

log = logging.getLogger(__name__)
DEFAULT_SUBDIR = "prepared_data"


@dataclass
class Prepared:
    folder: Path
    key: str
    reused: bool
    seconds: float


def prepared_root(config: FineTuneConfig) -> Path:
    """dataset_prepared_path, else output_dir/prepared_data (both relative to the CWD)."""
    if config.dataset_prepared_path:
        return Path(config.dataset_prepared_path).expanduser()
    return Path(config.output_dir) / DEFAULT_SUBDIR


def prepare(
    config: FineTuneConfig,
    tokenizer: Any,
    *,
    base_dir: Path | None = None,
    processes: int | None = None,
    force: bool = False,
) -> Prepared:
    """Build the cache for `config` unless a complete one with the same key exists."""
    started = time.perf_counter()
    root = prepared_root(config)
    sources = [open_source(ds, base_dir) for ds in config.datasets]
    key, inputs = cache_key(config, tokenizer, [s.fingerprint() for s in sources])
    folder = root / key
    if is_complete(folder) and not force:
        log.info("reusing the prepared dataset cache %s (inputs unchanged)", folder)
        return Prepared(folder, key, True, time.perf_counter() - started)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{key}.lock"):
        if is_complete(folder) and not force:
            log.info("reusing the prepared dataset cache %s (prepared meanwhile)", folder)
            return Prepared(folder, key, True, time.perf_counter() - started)
        stale = _stale_caches(root, key, inputs)
        for old, changed in stale:
            log.info(
                "prepared dataset cache %s is stale (changed: %s); rebuilding",
                old,
                ", ".join(changed) or "unknown",
            )
        if not stale:
            log.info("preparing the dataset cache %s", folder)
        if force and folder.exists():
            shutil.rmtree(folder)
        _build(config, tokenizer, folder, key, inputs, sources, base_dir, processes)
        for old, _ in stale:
            shutil.rmtree(old, ignore_errors=True)
    seconds = time.perf_counter() - started
    log.info("prepared the dataset cache %s in %.1fs", folder, seconds)
    return Prepared(folder, key, False, seconds)


def _build(
    config: FineTuneConfig,
    tokenizer: Any,
    folder: Path,
    key: str,
    inputs: dict[str, Any],
    sources: list[Source],
    base_dir: Path | None,
    processes: int | None,
) -> None:
    writer = CacheWriter(folder)
    try:
        stats = stream_datasets(
            config, tokenizer, writer, base_dir=base_dir, processes=processes, sources=sources
        )
        training = config.training
        capacity = training.sequence_len if training.sample_packing else None
        rows = writer.pack(capacity)
        stats.train_rows, stats.eval_rows = rows["train"], rows["eval"]
        if capacity is not None:
            stats.packing_efficiency = stats.train_tokens / (rows["train"] * capacity)
        writer.commit({"key": key, "inputs": inputs, "stats": stats.as_dict()})
    except BaseException:
        writer.abort()
        raise


def _stale_caches(root: Path, key: str, inputs: dict[str, Any]) -> list[tuple[Path, list[str]]]:
    """Complete caches in `root` built from the same dataset paths with other inputs."""
    paths = [d["settings"]["path"] for d in inputs["datasets"]]
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name == key or not is_complete(folder):
            continue
        try:
            old = read_meta(folder)["inputs"]
        except (OSError, ValueError, KeyError):
            continue
        if [d["settings"]["path"] for d in old.get("datasets", [])] == paths:
            found.append((folder, changed_inputs(old, inputs)))
    return found


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def open_prepared(folder: Path, config: FineTuneConfig) -> DatasetBundle:
    """The train/eval sets of a complete cache, memory-mapped."""
    meta = read_meta(folder)
    packed = config.training.sample_packing
    train = MappedDataset(folder, "train", packed)
    evals = MappedDataset(folder, "eval", packed)
    return DatasetBundle(train, evals if len(evals) else None, DataStats.from_dict(meta["stats"]))


def prepared_datasets(
    config: FineTuneConfig,
    tokenizer: Any,
    *,
    base_dir: Path | None,
    local_rank: int,
    barrier: Callable[[], None],
) -> DatasetBundle:
    """Local rank 0 finds or builds the cache while the others wait; all map it."""
    failure: FinetuneError | None = None
    folder: Path | None = None
    if local_rank == 0:
        try:
            folder = prepare(config, tokenizer, base_dir=base_dir).folder
        except FinetuneError as exc:  # raised after the barrier, so no rank hangs
            failure = exc
    barrier()
    if failure is not None:
        raise failure
    if folder is None:  # other ranks: the key again (cheap: hashing, no tokenizing)
        sources = [open_source(ds, base_dir) for ds in config.datasets]
        key, _ = cache_key(config, tokenizer, [s.fingerprint() for s in sources])
        folder = prepared_root(config) / key
        if not is_complete(folder):
            raise DatasetError(f"local rank 0 did not prepare {folder}; see its log for the reason")
    return open_prepared(folder, config)
