"""The effective training config a worker pod runs: the user's config with pod paths.

Rewrites (documented in docs/operator.md):
- `output_dir` -> /checkpoints (the checkpoint PVC), so every attempt resumes from it;
- with `spec.model`: `base_model` -> /data/model (and `tokenizer` when it named the same
  model or a path under `spec.model.uri`);
- with `spec.dataset`: relative dataset paths -> /data/dataset/<path>; `s3://` paths under
  `spec.dataset.uri` -> their place under /data/dataset (the URI itself, when it names one
  object, -> /data/dataset/<basename>); other `s3://` paths are an error, since the pod
  fetches only `spec.dataset.uri`.
Absolute paths and other schemes (builtin:, hub ids) are left alone.
"""

from __future__ import annotations

import posixpath
from typing import Any

from finetune_operator import constants as c
from finetune_operator.spec.errors import SpecError, SpecIssue
from finetune_operator.spec.job import FineTuneJobSpec


def s3_relative(uri: str, path: str) -> str | None:
    """Where `path` sits below the fetched `uri`, or None if it is outside it."""
    uri = uri.rstrip("/")
    if path.rstrip("/") == uri:
        return posixpath.basename(uri)
    if path.startswith(uri + "/"):
        return path[len(uri) + 1 :]
    return None


def _local(base: str, rel: str) -> str:
    rel = posixpath.normpath(rel.lstrip("/"))
    return base if rel in ("", ".") else f"{base}/{rel}"


def _has_scheme(path: str) -> bool:
    head, sep, _ = path.partition(":")
    return bool(sep) and head.isalpha() and len(head) > 1


def rewrite(config: dict[str, Any], spec: FineTuneJobSpec) -> dict[str, Any]:
    """Return a copy of the canonical config dict with pod-local paths (pure)."""
    out = dict(config)
    issues: list[SpecIssue] = []
    out["output_dir"] = c.CHECKPOINT_DIR
    if spec.model is not None:
        original = out.get("base_model")
        out["base_model"] = c.MODEL_DIR
        tokenizer = out.get("tokenizer")
        if tokenizer and tokenizer == original:
            out["tokenizer"] = c.MODEL_DIR
        elif tokenizer and tokenizer.startswith("s3://"):
            rel = s3_relative(spec.model.uri, tokenizer)
            if rel is not None:
                out["tokenizer"] = _local(c.MODEL_DIR, rel)
    if spec.dataset is not None:
        datasets = []
        for i, ds in enumerate(out.get("datasets") or []):
            ds = dict(ds)
            path = str(ds.get("path", ""))
            if path.startswith("s3://"):
                rel = s3_relative(spec.dataset.uri, path)
                if rel is None:
                    issues.append(
                        SpecIssue(
                            f"spec.config.datasets[{i}].path",
                            f"{path} is not under spec.dataset.uri ({spec.dataset.uri}); the "
                            "pod fetches only that prefix: move the file there or change the URI",
                        )
                    )
                else:
                    ds["path"] = _local(c.DATASET_DIR, rel)
            elif not path.startswith("/") and not _has_scheme(path):
                ds["path"] = _local(c.DATASET_DIR, path)
            datasets.append(ds)
        out["datasets"] = datasets
    if issues:
        raise SpecError(issues)
    return out


def effective_config_yaml(config: Any, spec: FineTuneJobSpec) -> str:
    """The YAML a worker pod runs: the validated FineTuneConfig with pod paths.

    The rewrite only replaces paths inside the already-validated config (typed copies, no
    second parse); a test checks that the result parses back to itself.
    """
    data = rewrite(config.model_dump(mode="json"), spec)
    datasets = [
        ds.model_copy(update={"path": new["path"]})
        for ds, new in zip(config.datasets, data["datasets"], strict=True)
    ]
    paths = {key: data[key] for key in ("output_dir", "base_model", "tokenizer")}
    return str(config.model_copy(update={**paths, "datasets": datasets}).to_yaml())
