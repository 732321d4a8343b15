"""The prepared dataset cache: tokenized, masked, split and packed examples on disk.

One folder per cache key (a hash of everything that affects the examples):

    <key>/meta.json              inputs of the key, DataStats, counts
    <key>/<split>.ids.int32      every example's tokens, concatenated (split: train, eval)
    <key>/<split>.trained.uint8  1 where the label is the token, 0 where it is -100
    <key>/<split>.offsets.int64  example i is [offsets[i], offsets[i+1])
    <key>/<split>.packs.int32    with sample_packing: example indices, pack after pack
    <key>/<split>.pack_offsets.int64

Arrays are raw little-endian NumPy buffers, opened with `np.memmap`, so every rank
maps the same pages and resident memory stays close to the files' size (about 5
bytes per token). A cache is written to a temporary folder and renamed into place:
a folder named by its key is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from torch.utils.data import Dataset

from finetune_runtime.config import FineTuneConfig
from finetune_runtime.data.encode import EncodedChunk
from finetune_runtime.data.packing import pack_bins
from finetune_runtime.data.tokenize import IGNORE_INDEX

CACHE_VERSION = 1  # bump when the encoding or the layout changes
META = "meta.json"
SPLITS = ("train", "eval")


def cache_key(config: FineTuneConfig, tokenizer: Any, contents: list[str]) -> tuple[str, dict]:
    """(key, inputs): `contents` are the datasets' content fingerprints, in order."""
    from finetune_runtime import __version__

    training = config.training
    inputs = {
        "cache_version": CACHE_VERSION,
        "runtime": __version__,
        "datasets": [
            {"settings": ds.model_dump(mode="json"), "content": content, **_plugin(ds.format)}
            for ds, content in zip(config.datasets, contents, strict=True)
        ],
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "chat_template": config.chat_template,
        "sequence_len": training.sequence_len,
        "sample_packing": training.sample_packing,
        "train_on_inputs": training.train_on_inputs,
        "seed": config.seed,
    }
    blob = json.dumps(inputs, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20], inputs


def _plugin(name: str | None) -> dict[str, str]:
    """A plugin format's distribution and version (a new release can change the examples);
    nothing for the built-ins, which `runtime` already versions."""
    from finetune_runtime.data.registry import origin_of

    entry = origin_of(name) if name is not None else None
    return {} if entry is None or entry.builtin else {"format_plugin": entry.distribution}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of the vocabulary, merges, normalizer, special and added tokens, template."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(
        repr(
            (
                type(tokenizer).__name__,
                sorted(tokenizer.get_added_vocab().items()),
                sorted((k, str(v)) for k, v in tokenizer.special_tokens_map.items()),
                getattr(tokenizer, "chat_template", None),
            )
        ).encode()
    )
    return h.hexdigest()


def changed_inputs(old: dict, new: dict) -> list[str]:
    """Top-level inputs that differ (datasets per entry), to say why a cache is stale."""
    changed = []
    for key in sorted(set(old) | set(new)):
        if key == "datasets":
            a, b = old.get(key, []), new.get(key, [])
            for i in range(max(len(a), len(b))):
                x = a[i] if i < len(a) else {}
                y = b[i] if i < len(b) else {}
                for part in ("settings", "content"):
                    if x.get(part) != y.get(part):
                        changed.append(f"datasets[{i}].{part}")
        elif old.get(key) != new.get(key):
            changed.append(key)
    return changed


# --------------------------------------------------------------------------- writing


class CacheWriter:
    """An ExampleSink appending to a temporary folder; `commit` packs and renames it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self._files: dict[str, IO[bytes]] = {}
        self.counts = {split: [0, 0] for split in SPLITS}  # examples, tokens

    def _file(self, name: str) -> IO[bytes]:
        if name not in self._files:
            self._files[name] = (self.tmp / name).open("wb")
        return self._files[name]

    def add(self, split: str, chunk: EncodedChunk) -> None:
        chunk.ids.astype("<i4", copy=False).tofile(self._file(f"{split}.ids.int32"))
        chunk.trained.tofile(self._file(f"{split}.trained.uint8"))
        chunk.lengths.astype("<i4", copy=False).tofile(self._file(f"{split}.lengths.int32"))
        self.counts[split][0] += len(chunk.lengths)
        self.counts[split][1] += len(chunk.ids)

    def pack(self, capacity: int | None) -> dict[str, int]:
        """Write offsets (and packs when `capacity`); rows (packs or examples) per split."""
        for f in self._files.values():
            f.close()
        rows = {}
        for split in SPLITS:
            lengths = np.array(_read_array(self.tmp / f"{split}.lengths.int32", "<i4"))
            (self.tmp / f"{split}.lengths.int32").unlink(missing_ok=True)
            offsets = np.zeros(len(lengths) + 1, dtype="<i8")
            np.cumsum(lengths, out=offsets[1:])
            offsets.tofile(self.tmp / f"{split}.offsets.int64")
            rows[split] = len(lengths)
            if capacity is not None and len(lengths):
                bins = pack_bins(lengths.tolist(), capacity)
                members = np.fromiter((i for b in bins for i in b), dtype="<i4")
                bounds = np.zeros(len(bins) + 1, dtype="<i8")
                np.cumsum([len(b) for b in bins], out=bounds[1:])
                members.tofile(self.tmp / f"{split}.packs.int32")
                bounds.tofile(self.tmp / f"{split}.pack_offsets.int64")
                rows[split] = len(bins)
        return rows

    def commit(self, meta: dict[str, Any]) -> None:
        """Write meta.json last and rename the folder into place."""
        meta = {**meta, "counts": self.counts}
        (self.tmp / META).write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8")
        try:
            os.rename(self.tmp, self.folder)
        except OSError:  # another process (a rank on another node) committed it first
            if not is_complete(self.folder):
                raise
            shutil.rmtree(self.tmp, ignore_errors=True)

    def abort(self) -> None:
        for f in self._files.values():
            f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def is_complete(folder: Path) -> bool:
    return (folder / META).is_file()


def read_meta(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / META).read_text(encoding="utf-8")))


# --------------------------------------------------------------------------- reading


def _read_array(path: Path, dtype: str) -> np.ndarray:
    """A memory-mapped read-only view (or an empty array: mmap refuses empty files)."""
    if not path.exists() or path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class MappedDataset(Dataset):
    """Examples (or packed rows) served from the memory-mapped cache.

    Items are what `TokenizedDataset` holds: {"input_ids", "labels"} lists, plus
    "position_ids" (restarting at 0 per example) for packed rows, so the collator
    needs no change. `example(i)` gives one unpacked example whatever the packing.
    """

    def __init__(self, folder: Path, split: str, packed: bool) -> None:
        self.folder, self.split, self.packed = folder, split, packed
        self.ids = _read_array(folder / f"{split}.ids.int32", "<i4")
        self.trained = _read_array(folder / f"{split}.trained.uint8", "u1")
        self.offsets = _read_array(folder / f"{split}.offsets.int64", "<i8")
        if packed:
            self.packs = _read_array(folder / f"{split}.packs.int32", "<i4")
            self.pack_offsets = _read_array(folder / f"{split}.pack_offsets.int64", "<i8")
        self.num_examples = max(0, len(self.offsets) - 1)
        self.num_tokens = int(len(self.ids))

    def __len__(self) -> int:
        return max(0, len(self.pack_offsets) - 1) if self.packed else self.num_examples

    def example_arrays(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, labels) of example `i` as int64 arrays."""
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        ids = np.asarray(self.ids[start:end], dtype=np.int64)
        labels = np.where(self.trained[start:end].astype(bool), ids, IGNORE_INDEX)
        return ids, labels

    def example(self, i: int) -> dict[str, list[int]]:
        ids, labels = self.example_arrays(i)
        return {"input_ids": ids.tolist(), "labels": labels.tolist()}

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        if not self.packed:
            return self.example(index)
        members = self.packs[int(self.pack_offsets[index]) : int(self.pack_offsets[index + 1])]
        ids_parts, label_parts, positions = [], [], []
        for i in members.tolist():
            ids, labels = self.example_arrays(i)
            labels[0] = IGNORE_INDEX  # never predicted from the previous example
            ids_parts.append(ids)
            label_parts.append(labels)
            positions.append(np.arange(len(ids)))
        return {
            "input_ids": np.concatenate(ids_parts).tolist(),
            "labels": np.concatenate(label_parts).tolist(),
            "position_ids": np.concatenate(positions).tolist(),
        }

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        for i in range(len(self)):
            yield self[i]

    @property
    def lengths(self) -> list[int]:
        example_lengths = np.diff(self.offsets)
        if not self.packed:
            return [int(n) for n in example_lengths]
        sums = np.add.reduceat(example_lengths[self.packs], self.pack_offsets[:-1])
        return [int(n) for n in sums]

    def nbytes(self) -> int:
        arrays = [self.ids, self.trained, self.offsets]
        if self.packed:
            arrays += [self.packs, self.pack_offsets]
        return int(sum(a.nbytes for a in arrays))
