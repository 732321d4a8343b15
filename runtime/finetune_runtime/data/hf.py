"""Open non-JSON sources with the Hugging Face `datasets` library, as axolotl does.

`name`, `split`, `data_files` and `revision` go to `load_dataset` unchanged. The
result is a memory-mapped Arrow `Dataset`; a DatasetDict is narrowed to `split`
(default `train`, or its only split). Every failure becomes a one-line
DatasetError naming the dataset.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from finetune_runtime.config import DatasetSettings
from finetune_runtime.errors import DatasetError

if TYPE_CHECKING:
    from finetune_runtime.data.source_kind import SourceSpec

log = logging.getLogger(__name__)


def load_hf_dataset(spec: SourceSpec, settings: DatasetSettings) -> Any:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - the runtime extra ships it
        raise DatasetError(
            f"reading {spec.display} needs the `datasets` library: pip install "
            "'finetune-operator[runtime]'",
            spec.display,
        ) from exc
    for name in ("datasets", "datasets.builder", "datasets.packaged_modules.cache.cache"):
        logging.getLogger(name).setLevel(logging.ERROR)  # "Found the latest cached ..."
    datasets.disable_progress_bars()
    try:
        loaded = _load(datasets, spec, settings)
    except DatasetError:
        raise
    except Exception as exc:  # noqa: BLE001 - datasets raises many unrelated types
        raise DatasetError(_failure(spec, settings, exc), spec.display) from exc
    return _pick_split(loaded, settings, spec)


def _load(datasets: Any, spec: SourceSpec, settings: DatasetSettings) -> Any:
    if spec.kind == "disk":
        return datasets.load_from_disk(spec.location)
    if spec.kind == "files":
        from pathlib import Path

        from finetune_runtime.data.source_kind import BUILDERS

        local = Path(spec.location)
        data_files = settings.data_files
        if data_files is None:
            data_files = (
                str(local)
                if local.is_file()
                else sorted(
                    str(p)
                    for p in local.iterdir()
                    if p.is_file() and BUILDERS.get(p.suffix) == spec.builder
                )
            )
        elif local.is_dir():
            data_files = _under(local, data_files)
        return datasets.load_dataset(spec.builder, data_files=data_files, split=None)
    return datasets.load_dataset(
        spec.location,
        name=settings.name,
        data_files=settings.data_files,
        revision=settings.revision,
        split=None,
    )


def _under(root: Any, data_files: Any) -> Any:
    """data_files relative to a local folder, as load_dataset(folder, ...) reads them."""
    if isinstance(data_files, str):
        return str(root / data_files)
    if isinstance(data_files, list):
        return [str(root / f) for f in data_files]
    return {k: _under(root, v) for k, v in data_files.items()}


def _pick_split(loaded: Any, settings: DatasetSettings, spec: SourceSpec) -> Any:
    import datasets

    if isinstance(loaded, datasets.IterableDataset | datasets.IterableDatasetDict):
        raise DatasetError("streaming datasets are not supported", spec.display)
    if not isinstance(loaded, datasets.DatasetDict):
        if settings.split not in (None, "train"):
            log.warning("%s has a single split; ignoring split=%s", spec.display, settings.split)
        return loaded
    splits = list(loaded)
    wanted = settings.split
    if wanted is None:
        wanted = "train" if "train" in loaded or len(splits) != 1 else splits[0]
    if wanted not in loaded:
        raise DatasetError(
            f"split {wanted!r} not found; the dataset has {', '.join(splits)}: set `split` to one",
            spec.display,
        )
    return loaded[wanted]


def _failure(spec: SourceSpec, settings: DatasetSettings, exc: Exception) -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if spec.kind != "hub":
        return f"cannot read with the datasets library ({type(exc).__name__}): {first}"
    import datasets

    offline = bool(datasets.config.HF_HUB_OFFLINE)
    selected = ", ".join(
        f"{key}={value!r}"
        for key, value in (
            ("name", settings.name),
            ("revision", settings.revision),
            ("data_files", settings.data_files),
        )
        if value is not None
    )
    where = f" ({selected})" if selected else ""
    if offline or isinstance(exc, ConnectionError):
        return (
            f"not a local file or folder, and hub dataset {spec.location!r}{where} is not in the "
            f"local datasets cache ({datasets.config.HF_DATASETS_CACHE})"
            f"{' and HF_HUB_OFFLINE=1 is set' if offline else ''}: hub datasets cannot be "
            "downloaded here. Load it once where the hub is reachable (same HF_HOME), or "
            f"export it to a local .jsonl/.parquet file or S3 and set `path` to that. ({first})"
        )
    return f"cannot load hub dataset {spec.location!r}{where}: {first}"
