"""Generation from trained outputs: a quick look at what a fine-tuned model says.

`finetune generate` and `finetune run` use it. `find_weights` decides, from what
the user points at (a config, an output_dir, a checkpoint, an adapter or a model
directory), which weights to load and which training config (hence prompt
template) goes with them; `load_for_generation` loads them (an adapter stays
unmerged on its base, which is the only way to serve prefix/prompt tuning);
`prompt_ids` renders a prompt exactly as the dataset's format renders training
prompts; `generate` continues it (greedy unless a temperature is given).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from finetune_runtime import contract
from finetune_runtime.data.tokenize import IGNORE_INDEX
from finetune_runtime.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from finetune_runtime.config import FineTuneConfig

ADAPTER_CONFIG = "adapter_config.json"
CHECKPOINT_CONFIG = "config.yaml"  # written into every checkpoint by the trainer


@dataclass(frozen=True)
class Sample:
    """A prompt taken from a tokenized example, and the response it was trained on."""

    prompt_ids: list[int]
    reference_ids: list[int]


def sample_from_example(example: dict[str, list[int]]) -> Sample | None:
    """Split an (unpacked) example at its first trained token: prompt | response.

    Works for every dataset format, because the data pipeline masks exactly the
    prompt (labels -100) and trains on the response.
    """
    if "position_ids" in example:
        starts = [i for i, p in enumerate(example["position_ids"]) if p == 0]
        end = starts[1] if len(starts) > 1 else len(example["input_ids"])
        example = {k: v[:end] for k, v in example.items()}
    labels = example["labels"]
    first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), None)
    if first is None or first == 0:
        return None
    reference = [t for t in labels[first:] if t != IGNORE_INDEX]
    return Sample(list(example["input_ids"][:first]), reference)


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompt: str | list[int],
    *,
    max_new_tokens: int = 48,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> str:
    """Continuation of `prompt` (text or token ids), decoded without special tokens:
    greedy when temperature is 0, else sampled."""
    if isinstance(prompt, str):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    else:
        ids = torch.tensor([prompt], dtype=torch.long)
    device = next(model.parameters()).device
    ids = ids.to(device)
    was_training = model.training
    model.eval()
    try:
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            **_decoding(temperature, top_p),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    finally:
        model.train(was_training)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def _decoding(temperature: float, top_p: float) -> dict[str, Any]:
    if temperature <= 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_p": top_p}


# --------------------------------------------------------------------------- prompts


def prompt_ids(
    config: FineTuneConfig, tokenizer: Any, text: str, input_text: str = ""
) -> list[int]:
    """Token ids of `text` as a prompt in the first dataset's format, ending where the
    trained response would begin: the alpaca/custom template with `text` as the instruction
    (and `input_text` as the input), the chat template with `text` as the user turn, or the
    raw text for `completion` data."""
    from finetune_runtime.data.formats import (
        FormatContext,
        Renderer,
        Segment,
        needs_chat_template,
        prompt_segments,
    )
    from finetune_runtime.data.templates import resolve_chat_template
    from finetune_runtime.data.tokenize import SegmentTokenizer

    settings = config.datasets[0].model_copy(update={"roles_to_train": ["assistant"]})
    encoder = SegmentTokenizer(tokenizer, sequence_len=1 << 30)
    if settings.format == "completion":
        ids = encoder.encode_many([[Segment(text, True)]])[0].input_ids
        return ids[:-1] if ids and ids[-1] == tokenizer.eos_token_id else ids
    renderer = None
    if needs_chat_template(settings):
        template = resolve_chat_template(settings.chat_template or config.chat_template, tokenizer)
        renderer = Renderer.for_tokenizer(template.text, template.name, tokenizer)
    segments = prompt_segments(FormatContext(settings, False, renderer), text, input_text)
    encoded = encoder.encode_many([segments])[0]
    sample = sample_from_example({"input_ids": encoded.input_ids, "labels": encoded.labels})
    if sample is None:  # pragma: no cover - every format trains its response
        raise ConfigError(f"datasets[0] ({settings.format}) renders no prompt")
    return sample.prompt_ids


# --------------------------------------------------------------------------- what to load


@dataclass(frozen=True)
class Weights:
    """What `finetune generate` loads: a model or adapter directory, and the training config
    that produced it when one is known (for the prompt template and the base model)."""

    path: Path
    kind: str  # "adapter" | "model" | "checkpoint-model" (a full fine-tune's training state)
    config: FineTuneConfig | None
    base_dir: Path | None  # where the config's relative paths are resolved


def find_weights(target: str, checkpoint: str | None = None) -> Weights:
    """Resolve CONFIG_OR_MODEL (and --checkpoint) to the weights to load.

    A config file or an output_dir: its finished weights (output_dir/adapter or model),
    else its newest complete checkpoint; `checkpoint` picks one instead (a step number,
    `latest`, or a path). A checkpoint directory, an adapter directory or a model
    directory is used as it is.
    """
    from finetune_runtime.config import load_config

    path = Path(target).expanduser()
    if path.is_file():
        config = load_config(path)
        return _from_output_dir(Path(config.output_dir), config, path.resolve().parent, checkpoint)
    if not path.is_dir():
        raise ConfigError(
            f"{target}: no such file or directory; give a training config, an output_dir, "
            "a checkpoint-<step>, an adapter or a model directory"
        )
    if (path / CHECKPOINT_CONFIG).is_file():
        return _from_checkpoint(path, _checkpoint_config(path), None)
    if (path / ADAPTER_CONFIG).is_file():
        return Weights(path, "adapter", None, None)
    if (path / "config.json").is_file():
        return Weights(path, "model", None, None)
    return _from_output_dir(path, None, None, checkpoint)


def _from_output_dir(
    out: Path, config: FineTuneConfig | None, base_dir: Path | None, checkpoint: str | None
) -> Weights:
    from finetune_runtime.storage.checkpoint_dirs import list_checkpoints

    found = list_checkpoints(out)
    if config is None and found:
        config = _checkpoint_config(found[-1].path)
    if checkpoint is not None:
        return _from_checkpoint(_pick_checkpoint(out, found, checkpoint), config, base_dir)
    if (out / contract.OUTPUT_ADAPTER / ADAPTER_CONFIG).is_file():
        return Weights(out / contract.OUTPUT_ADAPTER, "adapter", config, base_dir)
    if (out / contract.OUTPUT_MODEL / "config.json").is_file():
        return Weights(out / contract.OUTPUT_MODEL, "model", config, base_dir)
    if found:
        return _from_checkpoint(found[-1].path, config, base_dir)
    raise ModelError(
        f"no trained weights in {out} (no adapter/, model/ or complete checkpoint-<step>); "
        "run `finetune train` first"
    )


def _pick_checkpoint(out: Path, found: list[Any], checkpoint: str) -> Path:
    if checkpoint == "latest":
        if not found:
            raise ModelError(f"--checkpoint latest: {out} has no complete checkpoint")
        return Path(found[-1].path)
    if checkpoint.isdigit():
        for ref in found:
            if ref.step == int(checkpoint):
                return Path(ref.path)
        steps = ", ".join(str(ref.step) for ref in found) or "none"
        raise ModelError(f"--checkpoint {checkpoint}: no such complete checkpoint (steps: {steps})")
    path = Path(checkpoint).expanduser()
    if not path.is_dir():
        raise ModelError(f"--checkpoint {checkpoint}: not a directory")
    return path


def _checkpoint_config(path: Path) -> FineTuneConfig:
    from finetune_runtime.config import load_config

    return load_config(path / CHECKPOINT_CONFIG)


def _from_checkpoint(path: Path, config: FineTuneConfig | None, base_dir: Path | None) -> Weights:
    from finetune_runtime.storage.checkpoint_dirs import COMPLETE

    if not (path / COMPLETE).is_file():
        raise ModelError(f"{path} is not a complete checkpoint (no {COMPLETE} marker)")
    if config is None:
        config = _checkpoint_config(path)
    if (path / contract.OUTPUT_ADAPTER / ADAPTER_CONFIG).is_file():
        return Weights(path / contract.OUTPUT_ADAPTER, "adapter", config, base_dir)
    if (path / "trainable.safetensors").is_file() and config.adapter == "none":
        return Weights(path, "checkpoint-model", config, base_dir)
    raise ModelError(
        f"{path} holds no loadable weights (no adapter/; a DeepSpeed full fine-tune keeps its "
        "weights in DeepSpeed's own layout): generate from output_dir/model after training"
    )


# --------------------------------------------------------------------------- loading


def load_for_generation(weights: Weights) -> tuple[Any, Any]:
    """(model in eval mode on CPU, tokenizer) for `weights`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_runtime.model.merge import load_adapter_model

    if weights.kind == "adapter":
        return load_adapter_model(weights.config, weights.path, base_dir=weights.base_dir)
    if weights.kind == "model":
        try:
            model = AutoModelForCausalLM.from_pretrained(weights.path)
            tokenizer = AutoTokenizer.from_pretrained(weights.path)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load model {weights.path}: {exc}") from exc
        return model.eval(), tokenizer
    return _load_checkpoint_model(weights)


def _load_checkpoint_model(weights: Weights) -> tuple[Any, Any]:
    """A full fine-tune's checkpoint: the base model with the checkpoint's trained weights."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from finetune_runtime.model.load import fit_embeddings, load_tokenizer, resolve_model_source

    config = weights.config
    assert config is not None
    source = resolve_model_source(config.base_model, weights.base_dir)
    tokenizer = load_tokenizer(config, source, weights.base_dir)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    fit_embeddings(model, tokenizer)
    state = load_file(str(weights.path / "trainable.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or len(state) == 0:
        raise ModelError(f"{weights.path}: trained weights do not fit {config.base_model!r}")
    return model.eval(), tokenizer


def describe(weights: Weights) -> str:
    """One line for the user: what is being loaded."""
    what = {"adapter": "adapter", "model": "model", "checkpoint-model": "checkpoint"}[weights.kind]
    if weights.kind == "adapter":
        peft_type = json.loads((weights.path / ADAPTER_CONFIG).read_text()).get("peft_type")
        what = f"{str(peft_type).lower()} adapter"
    template = "no prompt template (raw text)"
    if weights.config is not None:
        template = f"{weights.config.datasets[0].format} prompt template"
    return f"{what} {weights.path}, {template}"
