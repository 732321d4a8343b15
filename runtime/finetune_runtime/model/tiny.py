"""Locally built models: `base_model: builtin:tiny-llama` (also small-llama, mid-llama).

Nothing can be downloaded from a model hub in CI, air-gapped clusters or this
repo's tests, yet the whole pipeline (tokenize, train, checkpoint, merge,
generate) must run for real. A builtin model is a small Llama with random
weights and a byte-level BPE tokenizer trained on the fly from the packaged
example data. Building is deterministic for a given name and seed, and the
result is cached as an ordinary Hugging Face model directory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from finetune_runtime import contract
from finetune_runtime.errors import ModelError

BUILTIN_PREFIX = "builtin:"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]

# ChatML: the template builtin tokenizers carry, used for sharegpt-style data.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinySpec:
    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    # The model's vocabulary when it should exceed what the tokenizer learns from the
    # small packaged corpus (BPE stops near 850 tokens): the extra rows are never
    # produced by the tokenizer but cost what a real 32k vocabulary costs in the LM head.
    model_vocab_size: int | None = None


BUILTINS: dict[str, TinySpec] = {
    "tiny-llama": TinySpec(),
    # A little wider and deeper: for benchmarks where matmuls should dominate.
    "small-llama": TinySpec(
        vocab_size=1024,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=1024,
    ),
    # Mid-size: big enough that matmuls and the 32k-vocab LM head, not per-op overhead,
    # dominate a training step (the training-speed bench, the axolotl comparison).
    "mid-llama": TinySpec(
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=2048,
        model_vocab_size=32000,
    ),
    # ~1.1 B parameters, TinyLlama-1.1B's shape: the GPU bench (bench/gpu.sh). Building it
    # takes a minute and 4.4 GB of disk; nothing on CPU uses it.
    "1b-llama": TinySpec(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        model_vocab_size=32000,
    ),
}


def is_builtin(name: str) -> bool:
    return name.startswith(BUILTIN_PREFIX)


def cache_root() -> Path:
    """Where builtin models live: $FINETUNE_CACHE or ~/.cache/finetune."""
    return contract.cache_root()


def resolve_builtin(name: str, seed: int = 0) -> Path:
    """Return the directory of builtin model `name`, building it on first use."""
    key = name[len(BUILTIN_PREFIX) :] if is_builtin(name) else name
    if key not in BUILTINS:
        known = ", ".join(BUILTIN_PREFIX + k for k in BUILTINS)
        raise ModelError(f"unknown builtin model {name!r}; known builtins: {known}")
    dest = cache_root() / "builtin" / f"{key}-seed{seed}"
    if (dest / "config.json").is_file() and (dest / "tokenizer.json").is_file():
        return dest
    build_tiny_llama(dest, BUILTINS[key], seed=seed)
    return dest


def _training_corpus() -> list[str]:
    data = resources.files("finetune_runtime") / "data"
    texts: list[str] = []
    for entry in sorted(data.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".jsonl"):
            continue
        for line in entry.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                texts.extend(str(v) for v in row.values() if isinstance(v, str))
    texts.append(
        "Below is an instruction that describes a task. ### Instruction: ### Input: ### Response:"
    )
    texts.append("system user assistant human gpt")
    return texts


def build_tokenizer(vocab_size: int):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_corpus(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_llama(dest: Path, spec: TinySpec = TinySpec(), seed: int = 0) -> Path:
    """Build a random-weight Llama plus tokenizer into `dest` (atomically)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(spec.vocab_size)
    config = LlamaConfig(
        vocab_size=max(len(tokenizer), spec.model_vocab_size or 0),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        # Not model.save_pretrained: with torch.distributed initialised, transformers writes
        # weights on global rank 0 only, and a rank > 0 building its own cache (another node
        # of a gang) would publish a model directory without weights.
        from safetensors.torch import save_file

        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        model.config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if not (tmp / "config.json").is_file():
            raise OSError(f"config.json was not written to {tmp}")
        if dest.exists():  # another process won the race; keep theirs
            shutil.rmtree(tmp)
            return dest
        os.replace(tmp, dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if (dest / "config.json").is_file():
            return dest
        raise ModelError(f"could not build builtin model into {dest}: {exc}") from exc
    return dest
