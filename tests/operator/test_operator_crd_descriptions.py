"""Every field under spec.config in the generated CRD says what it does, so
`kubectl explain finetunejob.spec.config...` is a reference, not a list of names."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_operator import crd


def undescribed(node: dict[str, Any], path: str) -> list[str]:
    """The paths of properties below `node` (through items and maps too) with no description."""
    missing = []
    for name, child in (node.get("properties") or {}).items():
        here = f"{path}.{name}"
        if not str(child.get("description") or "").strip():
            missing.append(here)
        missing += undescribed(child, here)
    for key, suffix in (("items", "[]"), ("additionalProperties", "{}")):
        if isinstance(node.get(key), dict):
            missing += undescribed(node[key], path + suffix)
    return missing


def config_schema(definition: dict[str, Any]) -> dict[str, Any]:
    schema = definition["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema["properties"]["spec"]["properties"]["config"]


def test_every_config_field_in_the_crd_has_a_description():
    config = config_schema(crd.crd())
    assert len(config["properties"]) >= 15 and config["description"]
    assert undescribed(config, "spec.config") == []


def test_the_check_finds_a_field_without_one():
    """The walk reaches nested sections and list items: removing one description is caught."""
    config = config_schema(crd.crd())
    item = config["properties"]["datasets"]["items"]
    del item["properties"]["splits"]["properties"]["validation"]["description"]
    del config["properties"]["training"]["properties"]["batch_size"]["description"]
    assert undescribed(config, "spec.config") == [
        "spec.config.datasets[].splits.validation",
        "spec.config.training.batch_size",
    ]


@pytest.mark.parametrize(
    ("path", "words"),
    [
        (("lora", "r"), "lora_r"),
        (("training", "batch_size"), "micro_batch_size"),
        (("training", "sequence_len"), "default 2048"),
        (("special_tokens",), "pad_token"),
    ],
)
def test_descriptions_reach_the_crd(path: tuple[str, ...], words: str):
    node = config_schema(crd.crd())
    for part in path:
        node = node["properties"][part]
    assert words in node["description"]
