"""Config text or mapping -> a validated `FineTuneConfig`, or one `ConfigError` listing every
problem at the key the user wrote and its line.

The steps: read the file (size and encoding checked), parse YAML keeping each key's line,
normalise an axolotl-style config to the canonical form, validate with the models, apply
the cross-field rules (then the caller's `extra_rules`), and put lines on every issue.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from finetune_runtime.config.axolotl import Normalized, normalize
from finetune_runtime.config.finetune import FineTuneConfig
from finetune_runtime.config.rules import Rule, cross_field_rules
from finetune_runtime.config.translate import issues_from_validation
from finetune_runtime.config.yamlsafe import MAX_CONFIG_BYTES, LineIndex, check_size, load_yaml
from finetune_runtime.errors import ConfigError, ConfigIssue


def load_config(path: str | Path) -> FineTuneConfig:
    """Read and validate a config file (YAML or JSON)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config is {size} bytes; the limit is {MAX_CONFIG_BYTES} bytes (10 MB)", str(path)
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config is not UTF-8 text (byte {exc.start})", str(path)) from exc
    return parse_config(text, source=str(path))


def parse_config(data: str | dict[str, Any], source: str = "<config>") -> FineTuneConfig:
    """Validate a config given as YAML/JSON text or as an already-parsed mapping.

    Raises ConfigError listing every problem, each with field and line.
    """
    return parse_config_with_warnings(data, source)[0]


def parse_config_with_warnings(
    data: str | dict[str, Any],
    source: str = "<config>",
    extra_rules: Callable[[FineTuneConfig], list[Rule]] | None = None,
) -> tuple[FineTuneConfig, list[str]]:
    """Like parse_config, also returning warnings (e.g. axolotl keys that are ignored).

    `extra_rules` adds checks of a valid config (e.g. that referenced files exist), reported
    like the schema's own: at the key the user wrote, with its line.
    """
    raw, index = _read_mapping(data, source)
    normalized = normalize(raw)
    config, issues = _validate(normalized, extra_rules)
    if issues:
        for issue in issues:
            if issue.line is None and issue.path is not None:
                issue.line = index.line_of(issue.path)
        raise ConfigError(issues, source)
    assert config is not None
    return config, normalized.warnings


def _read_mapping(data: str | dict[str, Any], source: str) -> tuple[dict[str, Any], LineIndex]:
    """The config as a mapping, with the line of each key when it came as text."""
    if isinstance(data, str):
        raw, index = load_yaml(data, source)
    else:
        check_size(json.dumps(data, default=str), source)
        raw, index = data, LineIndex()
    if raw is None:
        raise ConfigError(
            "config is empty: expected a mapping with base_model and datasets", source
        )
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config must be a mapping of keys to values, not a {type(raw).__name__}", source
        )
    return raw, index


def _validate(
    normalized: Normalized, extra_rules: Callable[[FineTuneConfig], list[Rule]] | None
) -> tuple[FineTuneConfig | None, list[ConfigIssue]]:
    """The model (None when invalid) and every issue, at the keys the user wrote."""
    issues = list(normalized.issues)
    try:
        config = FineTuneConfig.model_validate(normalized.data)
    except ValidationError as exc:
        return None, issues + issues_from_validation(exc, normalized.origin)
    rules = cross_field_rules(config)
    if extra_rules is not None and not rules:
        rules = extra_rules(config)
    issues += [ConfigIssue.at(normalized.origin(loc), message) for loc, message in rules]
    return config, issues
