"""Fuzzing the training config parser: any input gives a config or a clear ConfigError.

Inputs: random text and YAML token soup (tags, anchors, aliases, flow/block mixes,
BOMs, NULs), alias bombs, deep nesting, huge numbers, NaN/inf, wrong types at every
schema field (generated from the pydantic models), random dicts as the operator
passes them, and mutations of valid canonical and axolotl-style configs.

Properties:
- `parse_config` returns a FineTuneConfig or raises ConfigError, never anything else;
- every issue has a message, and `str(error)` names the issue's field and, for YAML
  text, its line;
- a mapping and its YAML text are judged alike (same verdict, same fields);
- an accepted config survives `to_yaml()` and `model_dump()` unchanged;
- each example is bounded in time by the hypothesis deadline (fuzz_strategies).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import yaml
from fuzz_strategies import (
    ANY,
    TEXT,
    field_value,
    fuzz_settings,
    json_values,
    leaf_fields,
    set_path,
)
from hypothesis import event, example, given, note
from hypothesis import strategies as st

from finetune_runtime.config import FineTuneConfig, parse_config
from finetune_runtime.config.axolotl import FLAT_MARKERS, SCALAR_MAP, SHARED_TOP_LEVEL
from finetune_runtime.config.yamlsafe import MAX_DEPTH
from finetune_runtime.errors import ConfigError

SOURCE = "fuzz.yaml"

CANONICAL: dict[str, Any] = {
    "base_model": "builtin:tiny-llama",
    "adapter": "lora",
    "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
    "datasets": [
        {"path": "data/train.jsonl", "format": "alpaca", "splits": {"validation": 0.1}},
    ],
    "training": {"epochs": 1, "batch_size": 2, "learning_rate": 0.0002, "max_steps": 10},
    "output_dir": "./outputs",
    "seed": 7,
}

AXOLOTL: dict[str, Any] = {
    "base_model": "NousResearch/Llama-2-7b-hf",
    "load_in_4bit": True,
    "adapter": "qlora",
    "datasets": [{"path": "data/alpaca.jsonl", "type": "alpaca"}],
    "val_set_size": 0.05,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_target_linear": True,
    "micro_batch_size": 2,
    "num_epochs": 1,
    "optimizer": "paged_adamw_32bit",
    "lr_scheduler": "cosine",
    "learning_rate": 0.0002,
    "bf16": "auto",
    "warmup_steps": 10,
    "output_dir": "./out",
}

# Every field path of the schema (lists descend into item 0).
CANONICAL_FIELDS = leaf_fields(FineTuneConfig)

AXOLOTL_KEYS = sorted(
    set(FLAT_MARKERS)
    | set(SCALAR_MAP)
    | set(SHARED_TOP_LEVEL)
    | {"rl", "optimizer", "lr_scheduler", "val_set_size", "pretraining_dataset", "fsdp"}
    | {"peft_use_dora", "bnb_config_kwargs", "special_tokens", "dataset", "plugins"}
)
AXOLOTL_DATASET_KEYS = [
    "path",
    "type",
    "format",
    "field",
    "field_messages",
    "message_field_role",
    "message_field_content",
    "message_property_mappings",
    "roles",
    "roles_to_train",
    "chat_template",
    "field_system",
    "system_prompt",
    "splits",
]
AXOLOTL_TYPES = st.sampled_from(
    [
        "alpaca",
        "alpaca:chat",
        "alpaca_chat.load_qa",
        "sharegpt:chat",
        "chat_template",
        "chat_template.default",
        "completion",
        "pretrain",
        "custom",
        "unknown_type",
        "",
    ]
)
CUSTOM_TYPE = st.fixed_dictionaries(
    {},
    optional={
        key: st.one_of(TEXT, ANY)
        for key in (
            "field_instruction",
            "field_input",
            "field_output",
            "field_system",
            "system_prompt",
            "system_format",
            "format",
            "no_input_format",
        )
    },
)


# ----------------------------------------------------------------------------- checks


def check_error(exc: ConfigError, from_text: bool) -> None:
    """A ConfigError a user can act on."""
    assert exc.issues, "a ConfigError lists at least one issue"
    rendered = str(exc)
    assert rendered.strip()
    for issue in exc.issues:
        assert isinstance(issue.message, str) and issue.message.strip(), issue.__dict__
        if issue.field is not None:
            assert issue.field in rendered, (issue.field, rendered)
            if from_text:
                assert issue.line is not None, f"no line for {issue.field}: {rendered}"
                assert f"{SOURCE}:{issue.line}:" in rendered, rendered


def parse_or_error(data: str | dict[str, Any]) -> FineTuneConfig | ConfigError:
    """parse_config, with the property that only ConfigError may come out of it."""
    try:
        config = parse_config(data, SOURCE)
    except ConfigError as exc:
        check_error(exc, from_text=isinstance(data, str))
        event("rejected")
        return exc
    event("accepted")
    return config


def canonical_json(config: FineTuneConfig) -> str:
    # json.dumps writes NaN as NaN (free-form deepspeed/options dicts may hold one), so two
    # configs compare equal here exactly when they hold the same values.
    return json.dumps(config.model_dump(mode="python"), sort_keys=True, default=repr)


def check_round_trip(config: FineTuneConfig) -> None:
    text = config.to_yaml()
    again = parse_config(text, "to_yaml")
    assert canonical_json(again) == canonical_json(config), text
    if "NaN" not in canonical_json(config):  # NaN != NaN, even in an equal config
        assert again == config
    dumped = parse_config(config.model_dump(mode="json"), "model_dump")
    assert canonical_json(dumped) == canonical_json(config)


def check_dict_and_text_agree(data: dict[str, Any]) -> FineTuneConfig | ConfigError:
    """The operator passes mappings, users write YAML: both must be judged alike."""
    from_dict = parse_or_error(copy.deepcopy(data))
    # Non-ASCII escaped, as to_yaml writes it (PyYAML emits a raw U+0085 inside quotes
    # with allow_unicode, which then reads back as a line break).
    text = yaml.safe_dump(data, sort_keys=False)
    note(text)
    from_text = parse_or_error(text)
    assert type(from_dict) is type(from_text), (from_dict, from_text)
    if isinstance(from_dict, ConfigError):
        assert isinstance(from_text, ConfigError)
        assert sorted(map(str, (i.field for i in from_dict.issues))) == sorted(
            map(str, (i.field for i in from_text.issues))
        )
    else:
        assert isinstance(from_text, FineTuneConfig)
        assert canonical_json(from_dict) == canonical_json(from_text)
        check_round_trip(from_dict)
    return from_dict


# ----------------------------------------------------------------------------- raw text

YAML_TOKENS = st.sampled_from(
    [
        "base_model",
        "datasets",
        "path",
        "lora",
        "r",
        "training",
        "deepspeed",
        ":",
        ": ",
        " ",
        "  ",
        "\n",
        "\n  ",
        "- ",
        "&a ",
        "*a",
        "&b ",
        "*b",
        "<<: ",
        "? ",
        "{",
        "}",
        "[",
        "]",
        ",",
        "|\n",
        ">-\n",
        "'",
        '"',
        "# c",
        "!!int ",
        "!!float ",
        "!!str ",
        "!!binary ",
        "!!timestamp ",
        "!!set ",
        "!!omap ",
        "!!python/object:os.system ",
        "!local ",
        "%YAML 1.1\n",
        "%TAG ! tag:x,2000:\n",
        "---\n",
        "...\n",
        ".nan",
        ".inf",
        "-.inf",
        "1e999",
        "0x1F",
        "0o17",
        "1_000",
        "9" * 5000,
        "2001-12-14",
        "2001-12-14t21:59:43.10-05:00",
        "~",
        "null",
        "yes",
        "\t",
        "\r\n",
        "\x00",
        "\ufeff",
        "\x85",
        "é",
        "🙂",
        "\\",
    ]
)


@fuzz_settings(400)
@given(st.one_of(st.text(max_size=80), st.lists(YAML_TOKENS, max_size=40).map("".join)))
# Found by fuzzing and fixed (each escaped as a raw exception before):
@example("!!int")  # IndexError in PyYAML's int constructor
@example("\ufeff!!timestamp")  # AttributeError
@example("seed: " + "9" * 5000)  # ValueError: more than 4300 digits
@example("!!python/object?- :")  # ConstructorError on a key
@example("null:[:")  # a key looking like a union tag emptied the error loc: IndexError
@example("x[\u00b2: 1")  # '²'.isdigit() but int('²') fails: ValueError
@example("[" * 3000 + "]" * 3000)  # RecursionError in PyYAML's composer
def test_random_text_gives_config_or_config_error(text: str) -> None:
    parse_or_error(text)


@fuzz_settings(150)
@given(
    prefix=st.lists(YAML_TOKENS, max_size=8).map("".join),
    body=st.sampled_from(
        [
            "base_model: builtin:tiny-llama\ndatasets:\n  - path: a.jsonl\n",
            "base_model: &m builtin:tiny-llama\ntokenizer: *m\ndatasets: [{path: a.jsonl}]\n",
            "lora_r: 8\nbase_model: b\ndatasets:\n  - path: a.jsonl\n    type: alpaca\n",
        ]
    ),
    suffix=st.lists(YAML_TOKENS, max_size=8).map("".join),
)
def test_valid_config_with_garbage_around_it(prefix: str, body: str, suffix: str) -> None:
    result = parse_or_error(prefix + body + suffix)
    if isinstance(result, FineTuneConfig):
        check_round_trip(result)


# A refused bomb costs ~0.2 s (it is expanded up to the node limit); an unbounded one would
# take hours. 10 s leaves room for a loaded CI machine without hiding a regression.
@fuzz_settings(40, deadline_ms=10_000)
@given(
    width=st.integers(2, 12),
    levels=st.integers(1, 12),
    where=st.sampled_from(["top", "deepspeed", "lora_options", "datasets"]),
)
def test_alias_expansion_is_bounded(width: int, levels: int, where: str) -> None:
    """Billion-laughs documents of any shape: refused (or small enough), never expanded
    past the node limit; the deadline catches an expansion that takes long."""
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    anchors = "\n".join(lines)
    refs = f"*a{levels}"
    body = {
        "top": f"{anchors}\nbase_model: b\ndatasets: [{{path: p}}]\n",
        "deepspeed": "base_model: b\ndatasets: [{path: p}]\ndeepspeed:\n  "
        + anchors.replace("\n", "\n  ")
        + f"\n  z: {refs}\n",
        "lora_options": "base_model: b\ndatasets: [{path: p}]\nlora:\n  options:\n    "
        + anchors.replace("\n", "\n    ")
        + "\n",
        "datasets": f"{anchors.split(chr(10))[0]}\nbase_model: b\ndatasets: [{{path: p}}]\n",
    }[where]
    result = parse_or_error(body)
    if width ** (levels + 1) > 200_000 and where != "datasets":
        assert isinstance(result, ConfigError)
        assert any("alias" in i.message or "more than" in i.message for i in result.issues)


@fuzz_settings(30, deadline_ms=10_000)
@given(
    depth=st.integers(MAX_DEPTH - 3, 3000),
    style=st.sampled_from(["flow_seq", "flow_map", "block_map", "block_seq"]),
)
def test_deep_nesting_is_refused_with_a_line(depth: int, style: str) -> None:
    text = {
        "flow_seq": "deepspeed: " + "[" * depth + "]" * depth,
        "flow_map": "deepspeed: " + "{a: " * depth + "1" + "}" * depth,
        "block_map": "deepspeed:\n"
        + "".join(" " * (i + 1) + "k:\n" for i in range(depth))
        + " " * (depth + 1)
        + "v\n",
        "block_seq": "deepspeed:\n" + "".join(" " * i + "- " for i in range(depth)) + "x\n",
    }[style]
    result = parse_or_error("base_model: b\ndatasets: [{path: p}]\n" + text)
    if depth > MAX_DEPTH:
        assert isinstance(result, ConfigError)
        assert any(
            "deeper" in issue.message and issue.line is not None for issue in result.issues
        ), str(result)


# ----------------------------------------------------------------------------- by schema


@fuzz_settings(300)
@given(
    st.lists(
        st.sampled_from(CANONICAL_FIELDS).flatmap(
            lambda field: st.tuples(st.just(field[0]), field_value(field[1]))
        ),
        min_size=1,
        max_size=4,
    )
)
@example([(("datasets", 0, "splits", "validation"), float("inf"))])  # OverflowError, fixed
def test_wrong_or_boundary_values_at_every_schema_field(
    mutations: list[tuple[tuple[str | int, ...], Any]],
) -> None:
    data = copy.deepcopy(CANONICAL)
    for path, value in mutations:
        set_path(data, path, value)
    result = check_dict_and_text_agree(data)
    if isinstance(result, ConfigError) and len(mutations) == 1:
        # The one field changed is the one blamed (or a field a cross-field rule names).
        path = mutations[0][0]
        top = str(path[0])
        fields = " ".join(str(i.field) for i in result.issues)
        assert top in fields or "adapter" in fields or "quantization" in fields, (path, fields)


@fuzz_settings(150)
@given(
    st.dictionaries(
        st.one_of(st.sampled_from(sorted(FineTuneConfig.model_fields)), TEXT),
        json_values(12),
        max_size=6,
    )
)
def test_random_mappings(data: dict[str, Any]) -> None:
    check_dict_and_text_agree(data)


@fuzz_settings(200)
@given(
    removed=st.lists(st.sampled_from(sorted(AXOLOTL)), max_size=3),
    changed=st.dictionaries(
        st.sampled_from(AXOLOTL_KEYS),
        st.one_of(
            ANY, st.sampled_from([None, 0, True, False, "", "auto", "true", "qlora", "8bit"])
        ),
        max_size=4,
    ),
    dataset=st.dictionaries(
        st.sampled_from(AXOLOTL_DATASET_KEYS),
        st.one_of(ANY, AXOLOTL_TYPES, CUSTOM_TYPE),
        max_size=4,
    ),
)
@example([], {}, {"type": {"system_format": "{system}", "system_prompt": 3}})  # TypeError, fixed
def test_mutated_axolotl_configs(
    removed: list[str], changed: dict[str, Any], dataset: dict[str, Any]
) -> None:
    data = copy.deepcopy(AXOLOTL)
    for key in removed:
        data.pop(key, None)
    data.update(changed)
    if isinstance(data.get("datasets"), list) and data["datasets"]:
        entry = data["datasets"][0]
        if isinstance(entry, dict):
            entry.update(dataset)
    check_dict_and_text_agree(data)


@fuzz_settings(100)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "lora": st.fixed_dictionaries(
                {},
                optional={
                    "r": st.integers(1, 512),
                    "alpha": st.floats(0.001, 1e6),
                    "dropout": st.floats(0, 0.999),
                    "target_modules": st.one_of(
                        st.just("all-linear"),
                        st.lists(st.sampled_from(["q_proj", "k_proj", "o_proj"]), min_size=1),
                    ),
                    "options": st.dictionaries(st.text(max_size=8), ANY, max_size=3),
                },
            ),
            "training": st.fixed_dictionaries(
                {},
                optional={
                    "epochs": st.floats(0.001, 1e6),
                    "batch_size": st.integers(1, 10**6),
                    "learning_rate": st.floats(1e-12, 10),
                    "scheduler": st.sampled_from(["linear", "cosine", "constant"]),
                    "max_grad_norm": st.one_of(st.none(), st.floats(0, 1e3)),
                    "sequence_len": st.integers(16, 2**20),
                    "precision": st.sampled_from(["auto", "fp32", "bf16", "fp16"]),
                },
            ),
            "deepspeed": st.one_of(
                st.sampled_from(["zero1", "zero2", "zero3", "conf/ds.json"]),
                st.dictionaries(st.text(max_size=8), ANY, max_size=3),
            ),
            "special_tokens": st.dictionaries(
                st.sampled_from(["pad_token", "eos_token"]), st.text(min_size=1, max_size=8)
            ),
            "chat_template": st.one_of(st.none(), st.text(max_size=30)),
            "seed": st.integers(-(2**63), 2**63),
            "output_dir": st.text(min_size=1, max_size=30).filter(
                lambda p: ".." not in p and "\x00" not in p and p.strip() != ""
            ),
        },
    )
)
@example({"deepspeed": {"": float("inf")}})  # to_yaml wrote inf as null, fixed
def test_valid_configs_round_trip(extra: dict[str, Any]) -> None:
    data = copy.deepcopy(CANONICAL)
    data.update(extra)
    config = parse_or_error(data)
    assert isinstance(config, FineTuneConfig), str(config)
    check_round_trip(config)
    check_dict_and_text_agree(data)
