"""Our side of a case: the same YAML through our config normalizer and data pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

Row = dict[str, list[int]]


@dataclass
class OurData:
    examples: list[Row]  # tokenized, before packing, in file order
    packed: list[Row] | None  # the packed rows when the config packs
    warnings: list[str]
    bos_id: int | None = None
    eos_id: int | None = None


def tokenize_case(config_path: Path) -> OurData:
    """Tokenize the config's datasets exactly as `finetune train` would."""
    from finetune_runtime.config import parse_config_with_warnings
    from finetune_runtime.data.pipeline import build_datasets
    from finetune_runtime.model.load import load_tokenizer, resolve_model_source

    base = config_path.parent
    config, warnings = parse_config_with_warnings(config_path.read_text(), str(config_path))
    tokenizer = load_tokenizer(config, resolve_model_source(config.base_model, base), base)
    unpacked = config.model_copy(
        update={"training": config.training.model_copy(update={"sample_packing": False})}
    )
    examples = list(build_datasets(unpacked, tokenizer, base_dir=base).train)
    packed = None
    if config.training.sample_packing:
        packed = [_plain(r) for r in build_datasets(config, tokenizer, base_dir=base).train]
    return OurData(
        [_plain(e) for e in examples],
        packed,
        warnings,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
    )


def _plain(row: dict[str, Any]) -> Row:
    return {k: list(v) for k, v in row.items()}
