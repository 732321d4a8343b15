"""Publish a finished run to S3: the trained weights, and optionally the merged model.

`finetune train --output-uri s3://bucket/prefix [--merge]` (or `$FINETUNE_OUTPUT_URI`,
`$FINETUNE_OUTPUT_MERGE`) uploads, on global rank 0 only and only after training completed:

- `output_dir/adapter` to `<uri>/adapter/` (a full fine-tune: `output_dir/model` to
  `<uri>/model/`);
- with merge: the adapter folded into its base model (`finetune merge`, written to
  `output_dir/merged`) to `<uri>/merged/`.

A failed upload fails the run (exit 6), so the operator restarts the gang; the restart
resumes from the final checkpoint, trains nothing and uploads again (unchanged objects are
skipped). The operator records the same URIs in `status.outputs`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from finetune_runtime import contract
from finetune_runtime.errors import ConfigError
from finetune_runtime.storage.upload import upload

log = logging.getLogger(__name__)

URI_ENV = contract.ENV_OUTPUT_URI
MERGE_ENV = contract.ENV_OUTPUT_MERGE
ENDPOINT_ENV = contract.ENV_OUTPUT_ENDPOINT_URL
REGION_ENV = contract.ENV_OUTPUT_REGION
MERGED = contract.OUTPUT_MERGED

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class OutputTarget:
    """Where a finished run's weights go."""

    uri: str  # s3://bucket/prefix, no trailing slash
    merge: bool = False
    endpoint_url: str | None = None
    region: str | None = None


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{name}={env[name]!r}: expected true or false")


def resolve_target(
    uri: str | None,
    merge: bool | None,
    endpoint_url: str | None = None,
    region: str | None = None,
    env: Mapping[str, str] | None = None,
) -> OutputTarget | None:
    """Flags first, then the environment; None when no output URI is set (pure)."""
    env = os.environ if env is None else env
    uri = uri or env.get(URI_ENV, "").strip() or None
    if merge is None:
        merge = _flag(env, MERGE_ENV)
    if uri is None:
        if merge:
            raise ConfigError(f"--merge ({MERGE_ENV}) needs an output URI: set --output-uri")
        return None
    if not uri.startswith("s3://") or len(uri.rstrip("/")) <= len("s3://"):
        raise ConfigError(f"--output-uri ({URI_ENV}): {uri!r} is not an s3://bucket/prefix URI")
    return OutputTarget(
        uri=uri.rstrip("/"),
        merge=merge,
        endpoint_url=endpoint_url or env.get(ENDPOINT_ENV, "").strip() or None,
        region=region or env.get(REGION_ENV, "").strip() or None,
    )


def check_target(target: OutputTarget, adapter: str) -> None:
    """Refuse what cannot work before training starts, not after hours of it."""
    reason = contract.merge_refusal(adapter) if target.merge else None
    if reason is not None:
        raise ConfigError(f"--merge: {reason}: drop --merge")


def output_uris(target: OutputTarget, weights_name: str) -> dict[str, str]:
    """{"adapter"|"model": URI, "merged": URI}: where each part lands (pure)."""
    return contract.output_uris(target.uri, weights_name, target.merge)


def publish(
    target: OutputTarget, weights_dir: Path, merged: Callable[[], Path] | None = None
) -> dict[str, str]:
    """Upload the final weights and, with `target.merge`, the directory `merged()` builds
    (the caller's `model.merge`, so storage needs no model code); returns the URIs written."""
    if target.merge and merged is None:
        raise ValueError("publish: target.merge needs `merged`, the step that builds it")
    uris = output_uris(target, weights_dir.name)

    def send(src: Path, uri: str) -> None:
        upload(
            src, uri, endpoint_url=target.endpoint_url, region=target.region, show_progress=False
        )

    send(weights_dir, uris[weights_dir.name])
    if target.merge and merged is not None:
        send(merged(), uris[MERGED])
    log.info("published %s", ", ".join(f"{k} → {v}" for k, v in uris.items()))
    return uris
