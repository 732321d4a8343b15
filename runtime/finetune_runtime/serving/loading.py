"""What `finetune serve MODEL_OR_CONFIG` serves, and loading it.

MODEL_OR_CONFIG is one of:

- a model directory (config.json: a merged model, a full fine-tune, any causal LM);
- an adapter directory (adapter_config.json): its base model plus the adapter;
- a training config (a YAML file): its outputs, `output_dir/merged` when merged, else
  `output_dir/adapter` on `base_model`, else `output_dir/model` (a full fine-tune).

`--adapter NAME=DIR` adds adapters to the base; each is served under its NAME, so a
request's `model` field picks one (peft multi-adapter, mixed in one batch). Served
names are only ever keys of a dict: a request's `model` never reaches the filesystem.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_runtime import contract
from finetune_runtime.errors import ConfigError, ModelError

ADAPTER_CONFIG = "adapter_config.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


@dataclass(frozen=True)
class ServeSource:
    """A resolved MODEL_OR_CONFIG: the base model and the adapters on it, by served name."""

    base: str  # a local model directory (or hub id when that is what a config names)
    base_name: str
    adapters: dict[str, Path] = field(default_factory=dict)
    tokenizer_dir: str | None = None
    trust_remote_code: bool = False


def check_name(name: str, what: str) -> str:
    if not NAME_RE.match(name):
        raise ConfigError(
            f"{what} {name!r}: use 1-64 letters, digits and . _ : - (starting with a letter "
            "or digit)"
        )
    return name


def parse_adapter_flag(raw: str) -> tuple[str, Path]:
    """`NAME=DIR` -> (NAME, DIR), checked."""
    name, sep, path = raw.partition("=")
    if not sep or not path:
        raise ConfigError(f"--adapter {raw!r}: expected NAME=DIR")
    directory = Path(path)
    if not (directory / ADAPTER_CONFIG).is_file():
        raise ConfigError(f"--adapter {raw!r}: {directory} has no {ADAPTER_CONFIG}")
    return check_name(name, "--adapter name"), directory


def resolve_source(
    target: str,
    adapters: Sequence[str] = (),
    served_name: str | None = None,
) -> ServeSource:
    """Decide what to serve from the command line (reads only small metadata files)."""
    path = Path(target)
    extra = dict(parse_adapter_flag(raw) for raw in adapters)
    if path.is_file():
        source = _from_config(path, served_name)
    elif (path / ADAPTER_CONFIG).is_file():
        source = _from_adapter_dir(path, served_name)
    elif (path / "config.json").is_file():
        name = check_name(served_name or path.resolve().name, "--served-model-name")
        source = ServeSource(base=str(path), base_name=name)
    elif path.is_dir():
        raise ModelError(
            f"{target}: neither a model directory (config.json) nor an adapter directory "
            f"({ADAPTER_CONFIG})"
        )
    else:
        raise ConfigError(f"{target}: no such model directory or training config")
    clash = set(extra) & ({source.base_name} | set(source.adapters))
    if clash:
        raise ConfigError(f"--adapter: name {sorted(clash)[0]!r} is already served")
    return ServeSource(
        base=source.base,
        base_name=source.base_name,
        adapters={**source.adapters, **extra},
        tokenizer_dir=source.tokenizer_dir,
        trust_remote_code=source.trust_remote_code,
    )


def _from_adapter_dir(path: Path, served_name: str | None) -> ServeSource:
    try:
        meta = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        base = str(meta["base_model_name_or_path"])
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(
            f"{path / ADAPTER_CONFIG}: cannot read base_model_name_or_path: {exc}"
        ) from None
    name = check_name(served_name or path.resolve().name, "--served-model-name")
    tokenizer = str(path) if (path / "tokenizer_config.json").is_file() else None
    return ServeSource(base=base, base_name="base", adapters={name: path}, tokenizer_dir=tokenizer)


def _from_config(path: Path, served_name: str | None) -> ServeSource:
    from finetune_runtime.config import load_config
    from finetune_runtime.model.load import resolve_model_source

    config = load_config(str(path))
    out = Path(config.output_dir)
    name = check_name(served_name or out.resolve().name, "--served-model-name")
    trust = config.trust_remote_code
    merged, adapter, model = (
        out / contract.OUTPUT_MERGED,
        out / contract.OUTPUT_ADAPTER,
        out / contract.OUTPUT_MODEL,
    )
    if (merged / "config.json").is_file():
        return ServeSource(base=str(merged), base_name=name, trust_remote_code=trust)
    if (adapter / ADAPTER_CONFIG).is_file():
        base = resolve_model_source(config.base_model, path.resolve().parent)
        has_tokenizer = (adapter / "tokenizer_config.json").is_file()
        return ServeSource(
            base=base,
            base_name="base",
            adapters={name: adapter},
            tokenizer_dir=str(adapter) if has_tokenizer else None,
            trust_remote_code=trust,
        )
    if (model / "config.json").is_file():
        return ServeSource(base=str(model), base_name=name, trust_remote_code=trust)
    raise ModelError(
        f"{path}: no trained outputs in {out} (merged/, adapter/ or model/); "
        "run `finetune train` (and `finetune merge`) first"
    )


@dataclass
class LoadedModel:
    """The model in memory, the tokenizer, and served name -> adapter (None: the base)."""

    model: Any
    tokenizer: Any
    names: dict[str, str | None]
    context_len: int
    eos_ids: set[int]
    pad_id: int
    peft: bool


def load(source: ServeSource, dtype: str = "fp32") -> LoadedModel:
    """Load weights and tokenizer (CPU, or the first GPU when there is one)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_runtime.storage.integrity import verify_weights

    for directory in [source.base, *source.adapters.values()]:
        if Path(str(directory)).is_dir():  # weights we wrote carry a manifest: check it
            verify_weights(Path(str(directory)), required=False)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.tokenizer_dir or source.base, trust_remote_code=source.trust_remote_code
        )
        model: Any = AutoModelForCausalLM.from_pretrained(
            source.base, dtype=torch_dtype, trust_remote_code=source.trust_remote_code
        )
    except OSError as exc:
        raise ModelError(f"cannot load {source.base}: {exc}") from exc
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    names: dict[str, str | None] = {source.base_name: None}
    if source.adapters:
        model = _with_adapters(model, source.adapters)
        names.update({name: name for name in source.adapters})
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        names=names,
        context_len=_context_len(model),
        eos_ids=_eos_ids(model, tokenizer),
        pad_id=_pad_id(tokenizer),
        peft=bool(source.adapters),
    )


def _with_adapters(model: Any, adapters: dict[str, Path]) -> Any:
    from peft import PeftModel

    first, *rest = adapters.items()
    try:
        peft_model = PeftModel.from_pretrained(model, first[1], adapter_name=first[0])
        for name, path in rest:
            peft_model.load_adapter(path, adapter_name=name)
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        raise ModelError(f"adapter does not fit the base model: {exc}") from exc
    return peft_model


def _context_len(model: Any) -> int:
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    found: set[int] = set()
    generation = getattr(model, "generation_config", None)
    for value in (getattr(generation, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, list):
            found.update(v for v in value if isinstance(v, int))
    return found


def _pad_id(tokenizer: Any) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if isinstance(value, int):
            return value
    return 0
