"""The compatibility matrix: one axolotl YAML per case, read by both tools as written.

Every case writes `CASE_DIR/config.yml` and `CASE_DIR/data.jsonl`; the YAML names
the data by a relative path, so both tools run with CASE_DIR as working directory.
Cases cover the prompt formats (alpaca, chat_template with three templates,
completion, a user-defined format), `train_on_inputs`, `sample_packing` and
`special_tokens`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Case:
    name: str
    rows: str  # which rows: alpaca | chat | text | tagged
    dataset: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def packed(self) -> bool:
        return bool(self.extra.get("sample_packing"))


ALPACA = {"path": "data.jsonl", "ds_type": "json", "type": "alpaca"}
CUSTOM = {
    "path": "data.jsonl",
    "ds_type": "json",
    "type": {
        "field_instruction": "instruction",
        "field_input": "input",
        "field_output": "output",
        "format": "[INST] {instruction}\n{input} [/INST] ",
        "no_input_format": "[INST] {instruction} [/INST] ",
    },
}
LLAMA3_TOKENS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
COMPLETION = {"path": "data.jsonl", "ds_type": "json", "type": "completion"}


def chat(template: str) -> dict[str, Any]:
    return {
        "path": "data.jsonl",
        "ds_type": "json",
        "type": "chat_template",
        "chat_template": template,
        "field_messages": "messages",
    }


CASES: tuple[Case, ...] = (
    Case("alpaca", "alpaca", ALPACA),
    Case("alpaca-train-inputs", "alpaca", ALPACA, {"train_on_inputs": True}),
    Case("alpaca-packed", "alpaca", ALPACA, {"sample_packing": True}),
    Case("alpaca-special-eos", "alpaca", ALPACA, {"special_tokens": {"eos_token": "<|im_end|>"}}),
    Case("custom", "alpaca", CUSTOM),
    Case("custom-train-inputs", "alpaca", CUSTOM, {"train_on_inputs": True}),
    Case("completion", "text", COMPLETION),
    Case("completion-packed", "text", COMPLETION, {"sample_packing": True}),
    Case("completion-long", "text", COMPLETION, {"sequence_len": 20}),
    Case(
        "completion-added-tokens",
        "tagged",
        COMPLETION,
        {"tokens": ["<call>", "</call>"], "lora_modules_to_save": ["embed_tokens", "lm_head"]},
    ),
    Case("chat-chatml", "chat", chat("chatml")),
    # The tiny tokenizer lacks llama3's header/turn tokens: add them, as a llama3 tokenizer
    # has them, and tell axolotl which one ends a turn (else it trains no terminator).
    Case(
        "chat-llama3",
        "chat",
        chat("llama3"),
        {
            "tokens": LLAMA3_TOKENS,
            "eot_tokens": ["<|eot_id|>"],
            "lora_modules_to_save": ["embed_tokens", "lm_head"],
        },
    ),
    Case("chat-tokenizer-default", "chat", chat("tokenizer_default")),
    Case("chat-chatml-train-inputs", "chat", chat("chatml"), {"train_on_inputs": True}),
    Case("chat-chatml-packed", "chat", chat("chatml"), {"sample_packing": True}),
)


def alpaca_rows() -> list[dict[str, Any]]:
    """The packaged alpaca sample: with and without `input`, varied lengths."""
    text = (resources.files("finetune_runtime") / "data" / "alpaca_sample.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()][:48]


def text_rows() -> list[dict[str, Any]]:
    return [
        {"text": f"{r['instruction']} {r.get('input', '')} {r['output']}".replace("  ", " ")}
        for r in alpaca_rows()
    ]


def tagged_rows() -> list[dict[str, Any]]:
    """Text with markup that only tokenizes as single tokens once `tokens` adds it."""
    return [{"text": f"<call>{r['instruction']}</call> {r['output']}"} for r in alpaca_rows()]


def chat_rows() -> list[dict[str, Any]]:
    """Conversations: single and multi-turn, some with a system turn."""
    rows = alpaca_rows()
    out: list[dict[str, Any]] = []
    for i in range(0, len(rows) - 1, 2):
        a, b = rows[i], rows[i + 1]
        user_a = f"{a['instruction']}\n\n{a['input']}" if a.get("input") else a["instruction"]
        messages = [
            {"role": "user", "content": user_a},
            {"role": "assistant", "content": a["output"]},
        ]
        if i % 4 == 0:
            messages += [
                {"role": "user", "content": b["instruction"]},
                {"role": "assistant", "content": b["output"]},
            ]
        if i % 6 == 0:
            messages.insert(0, {"role": "system", "content": "You are a careful assistant."})
        out.append({"messages": messages})
    return out


ROWS = {"alpaca": alpaca_rows, "chat": chat_rows, "text": text_rows, "tagged": tagged_rows}


def base_config(model_dir: Path, sequence_len: int = 512) -> dict[str, Any]:
    """What every case shares: a local model, no eval split, one process, a fixed seed."""
    return {
        "base_model": str(model_dir),
        "sequence_len": sequence_len,
        "dataset_prepared_path": "prepared",
        "val_set_size": 0,
        "output_dir": "out",
        "micro_batch_size": 2,
        "num_epochs": 1,
        "learning_rate": 0.0001,
        "optimizer": "adamw_torch",
        "lr_scheduler": "constant",
        "adapter": "lora",
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "lora_target_modules": ["q_proj", "v_proj"],
        "seed": 42,
        "bf16": False,
        "fp16": False,
        "tf32": False,
        "shuffle_merged_datasets": False,
        "dataset_num_proc": 1,
        "attn_implementation": "sdpa",
    }


def write_case(case: Case, model_dir: Path, case_dir: Path) -> Path:
    """Write config.yml and data.jsonl for `case` into `case_dir`; return the config path."""
    case_dir.mkdir(parents=True, exist_ok=True)
    with open(case_dir / "data.jsonl", "w", encoding="utf-8") as f:
        for row in ROWS[case.rows]():
            f.write(json.dumps(row) + "\n")
    config = base_config(model_dir) | {"datasets": [case.dataset]} | case.extra
    path = case_dir / "config.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- training

# Kinds of training compared for loss-curve equivalence.
TRAINING: dict[str, dict[str, Any]] = {
    "lora": {"adapter": "lora", "learning_rate": 0.002},
    "qlora": {"adapter": "qlora", "load_in_4bit": True, "learning_rate": 0.002},
    "full": {"adapter": None, "learning_rate": 0.0002},
}
TRAIN_ROWS = 16
TRAIN_STEPS = 6


def write_training_case(kind: str, model_dir: Path, case_dir: Path) -> Path:
    """One whole-dataset batch per step, so data order cannot make the curves differ."""
    case_dir.mkdir(parents=True, exist_ok=True)
    with open(case_dir / "data.jsonl", "w", encoding="utf-8") as f:
        for row in alpaca_rows()[:TRAIN_ROWS]:
            f.write(json.dumps(row) + "\n")
    config = base_config(model_dir, sequence_len=256) | {
        "datasets": [ALPACA],
        "micro_batch_size": TRAIN_ROWS,
        "gradient_accumulation_steps": 1,
        "num_epochs": TRAIN_STEPS,
        "max_steps": TRAIN_STEPS,
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "logging_steps": 1,
        "save_steps": TRAIN_STEPS,
        "save_total_limit": 1,
    }
    config |= TRAINING[kind]
    if config["adapter"] is None:
        for key in ("adapter", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"):
            config.pop(key)
    path = case_dir / "config.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path
