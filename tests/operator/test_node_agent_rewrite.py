"""The node agent's path rewriting (pure): what a pod sees at /checkpoints is a host dir."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from kubeharness.rewrite import rewrite_file_text, rewrite_path

MOUNTS = {
    "/etc/finetune": Path("/host/config"),
    "/data": Path("/host/data"),
    "/data/model": Path("/host/model"),
    "/checkpoints": Path("/host/pvc"),
}


def test_leading_mount_paths_are_rewritten_longest_first():
    assert rewrite_path("/checkpoints", MOUNTS) == "/host/pvc"
    assert rewrite_path("/checkpoints/checkpoint-8", MOUNTS) == "/host/pvc/checkpoint-8"
    assert rewrite_path("/data/dataset/train.jsonl", MOUNTS) == "/host/data/dataset/train.jsonl"
    assert rewrite_path("/data/model/config.json", MOUNTS) == "/host/model/config.json"
    assert rewrite_path("/etc/finetune/config.yaml", MOUNTS) == "/host/config/config.yaml"


def test_other_values_are_left_alone():
    for value in ("/database", "/checkpointsX", "data/x", "builtin:tiny-llama", "s3://b/data", ""):
        assert rewrite_path(value, MOUNTS) == value


def test_yaml_and_json_config_files_get_host_paths():
    config = {
        "base_model": "builtin:tiny-llama",
        "datasets": [{"path": "/data/dataset/train.jsonl", "format": "alpaca"}],
        "output_dir": "/checkpoints",
        "training": {"max_steps": 3},
    }
    out = yaml.safe_load(rewrite_file_text("config.yaml", yaml.safe_dump(config), MOUNTS))
    assert out["output_dir"] == "/host/pvc"
    assert out["datasets"] == [{"path": "/host/data/dataset/train.jsonl", "format": "alpaca"}]
    assert out["training"] == {"max_steps": 3} and out["base_model"] == "builtin:tiny-llama"
    as_json = json.loads(rewrite_file_text("ds.json", json.dumps(config), MOUNTS))
    assert as_json["output_dir"] == "/host/pvc"


def test_untouched_and_foreign_files_keep_their_bytes():
    text = "# a comment\nkey: value\n"
    assert rewrite_file_text("x.yaml", text, MOUNTS) == text  # nothing to rewrite
    assert rewrite_file_text("run.sh", "cd /checkpoints\n", MOUNTS) == "cd /checkpoints\n"
    assert rewrite_file_text("bad.yaml", "a: [unclosed\n", MOUNTS) == "a: [unclosed\n"
