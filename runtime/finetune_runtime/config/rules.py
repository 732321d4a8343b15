"""Rules a config must follow that one field's type cannot say: several fields together,
or a field's text read closer (a custom prompt template).

Each rule reports `(location, message)` at the field the user should change; the loader
maps the location back to the key the user wrote and its line.
"""

from __future__ import annotations

from finetune_runtime.config.base import Loc
from finetune_runtime.config.dataset import DatasetSettings, template_problems
from finetune_runtime.config.finetune import FineTuneConfig

Rule = tuple[Loc, str]

# Pairs of training settings that say the same thing two ways: give one.
EXCLUSIVE_TRAINING = (
    ("warmup_steps", "warmup_ratio"),
    ("save_steps", "saves_per_epoch"),
    ("eval_steps", "evals_per_epoch"),
)


def cross_field_rules(config: FineTuneConfig) -> list[Rule]:
    """Every rule broken by a schema-valid config, each reported at the field to change."""
    found = _adapter_rules(config) + _training_rules(config)
    for i, ds in enumerate(config.datasets):
        found += _dataset_rules(ds, ("datasets", i))
    return found


def _adapter_rules(config: FineTuneConfig) -> list[Rule]:
    found: list[Rule] = []
    quant = config.quantization
    if config.adapter == "qlora" and (quant is None or quant.bits != 4):
        found.append(
            (
                ("adapter",),
                "adapter 'qlora' requires 4-bit quantization: add `quantization: {bits: 4}` "
                "(axolotl: load_in_4bit: true)",
            )
        )
    if quant is not None and config.adapter == "none":
        found.append(
            (
                ("quantization",),
                "a quantized base model cannot be fully fine-tuned: use adapter 'qlora' or "
                "'lora', or remove quantization",
            )
        )
    if config.is_prompt_learning and config.training.sample_packing:
        found.append(
            (
                ("training", "sample_packing"),
                f"adapter {config.adapter!r} puts virtual tokens before every sequence, which "
                "packed rows cannot share: set sample_packing to false",
            )
        )
    if config.added_tokens and config.uses_lora_family and not config.lora.modules_to_save:
        found.append(
            (
                ("added_tokens",),
                "new tokens would keep random, untrained embeddings under a LoRA adapter: set "
                "lora.modules_to_save to the embedding layers (Llama: [embed_tokens, lm_head]; "
                "axolotl: lora_modules_to_save), as axolotl requires",
            )
        )
    return found


def _training_rules(config: FineTuneConfig) -> list[Rule]:
    training = config.training
    return [
        (("training", b), f"set {a} or {b}, not both")
        for a, b in EXCLUSIVE_TRAINING
        if getattr(training, a) and getattr(training, b)
    ]


def _dataset_rules(ds: DatasetSettings, here: Loc) -> list[Rule]:
    found: list[Rule] = []
    if ds.format == "custom" and not ds.prompt_format:
        found.append(
            (
                here + ("prompt_format",),
                "format 'custom' needs prompt_format, e.g. '{instruction}\\n{input}\\n' "
                "(the output field is appended as the response)",
            )
        )
    found += [(here + (key,), problem) for key, problem in template_problems(ds)]
    val, train = ds.splits.validation, ds.splits.train
    if val >= 1 and val != int(val):
        found.append(
            (
                here + ("splits", "validation"),
                "must be a fraction below 1 or a whole number of rows",
            )
        )
    if train is not None and (val >= 1 or abs(train + val - 1.0) > 1e-6):
        found.append(
            (
                here + ("splits", "train"),
                f"train ({train}) and validation ({val}) must be fractions adding up to 1",
            )
        )
    return found
