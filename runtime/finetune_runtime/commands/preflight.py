"""What `finetune validate` checks beyond the schema: that what the config points at exists.

Each problem is reported at the field the user wrote (with its line), as the schema's
own errors are: a missing local dataset, DeepSpeed JSON or model directory, and an
output_dir that is a system directory or cannot be written. Remote things (s3://,
hub ids) are not fetched here; `--check-data` reads the data itself.
"""

from __future__ import annotations

from pathlib import Path

from finetune_runtime.config import FineTuneConfig, Rule
from finetune_runtime.errors import ConfigError, DatasetError, ModelError
from finetune_runtime.storage.outdir import check_output_dir, resolve_output_dir


def reference_rules(config: FineTuneConfig, base_dir: Path) -> list[Rule]:
    found: list[Rule] = []
    for i, ds in enumerate(config.datasets):
        problem = _dataset_problem(ds.path, base_dir)
        if problem:
            found.append((("datasets", i, "path"), problem))
    if isinstance(config.deepspeed, str) and config.deepspeed.endswith(".json"):
        from finetune_runtime.train.backends.deepspeed_config import load_source

        try:
            load_source(config.deepspeed, base_dir)
        except ConfigError as exc:
            found.append((("deepspeed",), "; ".join(i.message for i in exc.issues)))
    for field in ("base_model", "tokenizer"):
        problem = _model_problem(getattr(config, field), base_dir)
        if problem:
            found.append(((field,), problem))
    problem = check_output_dir(resolve_output_dir(config.output_dir, base_dir), create=False)
    if problem:
        found.append((("output_dir",), problem))
    return found


def _dataset_problem(path: str, base_dir: Path) -> str | None:
    from finetune_runtime.data.readers import resolve_dataset_path

    if path.startswith("s3://"):
        return None
    try:
        resolve_dataset_path(path, base_dir)
    except DatasetError as exc:
        text, prefix = str(exc), f"{exc.path}: "
        return text[len(prefix) :] if text.startswith(prefix) else text
    return None


def _model_problem(name: str | None, base_dir: Path) -> str | None:
    """A local model directory that is missing or not a model; hub ids and s3:// pass."""
    from finetune_runtime.model.load import resolve_model_source
    from finetune_runtime.model.tiny import is_builtin

    if name is None or is_builtin(name) or name.startswith("s3://"):
        return None
    try:
        resolve_model_source(name, base_dir)
    except ModelError as exc:
        return str(exc)
    return None
