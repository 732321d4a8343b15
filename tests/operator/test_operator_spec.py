"""Spec validation: every error names the field and says what to do."""

from __future__ import annotations

import pytest
import yaml
from op_fixtures import CONFIG, job

from finetune_operator.effective import effective_config_yaml, rewrite, s3_relative
from finetune_operator.spec import SpecError, parse_spec, validate_job


def error(spec: dict, **meta) -> str:
    with pytest.raises(SpecError) as info:
        validate_job(job(spec, **meta))
    text = str(info.value)
    assert text.endswith("Fix the FineTuneJob and apply it again.")
    return text


def test_defaults():
    spec = validate_job(job()).spec
    assert spec.nodes == 1 and spec.procs_per_node == 1 and spec.gpus_per_node == 0
    policy = spec.run_policy
    assert policy.backoff_limit == 3
    assert policy.clean_pod_policy == "Running"
    assert policy.suspend is False
    assert policy.active_deadline_seconds is None and policy.ttl_seconds_after_finished is None


@pytest.mark.parametrize(
    ("resources", "nproc", "procs", "gpus"),
    [
        ({"gpus": 4}, None, 4, 4),
        ({"gpus": True}, 2, 2, 2),
        ({"gpus": True}, None, 1, 1),
        ({"gpus": False}, 3, 3, 0),
        ({"gpus": 0}, None, 1, 0),
        ({"limits": {"nvidia.com/gpu": 8}}, 8, 8, 0),
    ],
)
def test_gpus_and_processes_per_node(resources, nproc, procs, gpus):
    spec = {"resources": resources} | ({"nprocPerNode": nproc} if nproc else {})
    parsed = validate_job(job(spec)).spec
    assert (parsed.procs_per_node, parsed.gpus_per_node) == (procs, gpus)


def test_config_as_yaml_text_is_accepted():
    text = "base_model: builtin:tiny-llama\ndatasets:\n  - path: train.jsonl\n"
    assert validate_job(job({"config": text})).config.base_model == "builtin:tiny-llama"


def test_axolotl_flat_config_is_accepted():
    flat = {
        "base_model": "builtin:tiny-llama",
        "adapter": "lora",
        "lora_r": 4,
        "micro_batch_size": 2,
        "datasets": [{"path": "train.jsonl", "type": "alpaca"}],
    }
    config = validate_job(job({"config": flat})).config
    assert config.lora.r == 4 and config.training.batch_size == 2


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"nodes": 0}, "spec.nodes: Input should be greater than or equal to 1 (got 0)"),
        ({"nproc_per_node": 2}, "spec.nproc_per_node: unknown field"),
        ({"runPolicy": {"backoffLimit": -1}}, "spec.runPolicy.backoffLimit"),
        ({"runPolicy": {"cleanPodPolicy": "Never"}}, "spec.runPolicy.cleanPodPolicy"),
        ({"imagePullPolicy": "Sometimes"}, "spec.imagePullPolicy"),
        ({"resources": {"limits": {"memory": "lots"}}}, "spec.resources.limits.memory"),
        ({"resources": {"gpus": -2}}, "spec.resources.gpus"),
        ({"dataset": {"uri": "https://bucket/x"}}, "spec.dataset.uri: 'https://bucket/x' is not"),
        (
            {"model": {"uri": "s3://models/x", "endpoint": "minio:9000"}},
            "spec.model.endpoint: 'minio:9000' must be an http:// or https:// URL",
        ),
        ({"dataset": {"uri": "s3://b/x", "secretRef": {}}}, "spec.dataset.secretRef.name"),
        (
            {"storage": {"existingClaim": "mine", "size": "1Gi"}},
            "spec.storage: existingClaim uses a PVC you made: drop size",
        ),
        ({"env": [{"name": "PET_NNODES", "value": "9"}]}, "PET_NNODES is set by the operator"),
        ({"env": [{"name": "AWS_ACCESS_KEY_ID", "value": "x"}]}, "spec.env[0].name"),
        ({"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}, "A is listed twice"),
        ({"env": [{"name": "1BAD"}]}, "is not a valid environment variable name"),
        (
            {"env": [{"name": "A", "value": "1", "valueFrom": {"x": 1}}]},
            "set value or valueFrom, not both",
        ),
        (
            {"env": [{"name": "WANDB_API_KEY", "value": "literal-key-123"}]},
            "WANDB_API_KEY is a credential: give it as valueFrom.secretKeyRef",
        ),
        (
            {"env": [{"name": "MLFLOW_TRACKING_TOKEN", "valueFrom": {"configMapKeyRef": {}}}]},
            "MLFLOW_TRACKING_TOKEN is a credential",
        ),
        (
            {"resources": {"gpus": 4}, "nprocPerNode": 2},
            "resources.gpus (4) and nprocPerNode (2) differ",
        ),
        (
            {"resources": {"gpus": 2, "limits": {"nvidia.com/gpu": 2}}},
            "either with resources.gpus or with nvidia.com/gpu",
        ),
        (
            {"nodes": 2, "storage": {"accessModes": ["ReadWriteOnce"]}},
            "include ReadWriteMany",
        ),
        ({"config": 42}, "spec.config"),
    ],
)
def test_spec_errors_name_the_field(spec, expected):
    assert expected in error(spec)


def test_tracker_credentials_by_secret_reference_are_accepted_and_never_echoed():
    ref = {"secretKeyRef": {"name": "trackers", "key": "wandb"}}
    valid = validate_job(job({"env": [{"name": "WANDB_API_KEY", "valueFrom": ref}]}))
    assert valid.spec.env[0].valueFrom == ref
    assert "literal-key-123" not in error(
        {"env": [{"name": "MLFLOW_TRACKING_PASSWORD", "value": "literal-key-123"}]}
    )


def test_merge_of_a_prompt_learning_adapter_is_an_invalid_spec():
    config = dict(CONFIG, adapter="prefix_tuning")
    text = error({"config": config, "output": {"uri": "s3://bucket/out", "merge": True}})
    assert "spec.output.merge" in text and "cannot be folded" in text


def test_missing_spec_and_config():
    body = job()
    del body["spec"]
    with pytest.raises(SpecError, match="spec: is required"):
        validate_job(body)
    body = job()
    del body["spec"]["config"]
    with pytest.raises(SpecError, match="spec.config: is required"):
        validate_job(body)


def test_several_problems_are_all_listed():
    text = error({"nodes": 0, "runPolicy": {"suspend": "maybe"}})
    assert text.startswith("2 problems in the FineTuneJob:")
    assert "spec.nodes" in text and "spec.runPolicy.suspend" in text


def test_config_errors_keep_the_runtime_message_with_line():
    text = error(
        {"config": "base_model: x\ndatasets:\n  - path: a.jsonl\ntraining:\n  epochs: 0\n"}
    )
    assert text.startswith("FineTuneJob ml/llama spec.config:5: training.epochs:")


def test_config_errors_from_inline_objects_name_the_field():
    text = error({"config": {**CONFIG, "lora_r": 0}})
    assert "FineTuneJob ml/llama spec.config: lora_r: Input should be greater than 0" in text


@pytest.mark.parametrize("name", ["Llama", "1llama", "llama_3", "llama-"])
def test_job_names_must_be_dns_labels(name):
    assert "metadata.name" in error({}, name=name)


def test_job_name_length_leaves_room_for_worker_hostnames():
    validate_job(job({"nodes": 10}, name="a" * 54))  # a...a-worker-9 is 63 characters
    assert "use at most 54 characters" in error({"nodes": 10}, name="a" * 55)


# ------------------------------------------------------------------------------ effective config


def test_s3_relative():
    assert s3_relative("s3://b/data", "s3://b/data/x/y.jsonl") == "x/y.jsonl"
    assert s3_relative("s3://b/data/train.jsonl", "s3://b/data/train.jsonl") == "train.jsonl"
    assert s3_relative("s3://b/data", "s3://b/database/x.jsonl") is None
    assert s3_relative("s3://b/data/", "s3://b/data/x.jsonl") == "x.jsonl"


def canonical(**over) -> dict:
    return {**validate_job(job()).config.model_dump(mode="json"), **over}


def test_rewrite_without_sources_only_moves_output_dir():
    spec = parse_spec({"config": CONFIG})
    out = rewrite(canonical(output_dir="./runs"), spec)
    assert out["output_dir"] == "/checkpoints"
    assert out["base_model"] == "builtin:tiny-llama"
    assert out["datasets"][0]["path"] == "train.jsonl"


def test_rewrite_with_sources():
    spec = parse_spec(
        {
            "config": CONFIG,
            "dataset": {"uri": "s3://data/set/train.jsonl"},
            "model": {"uri": "s3://models/llama"},
        }
    )
    config = canonical(
        base_model="s3://models/llama",
        tokenizer="s3://models/llama/tokenizer",
        datasets=[{"path": "s3://data/set/train.jsonl"}, {"path": "./local.jsonl"}],
    )
    out = rewrite(config, spec)
    assert out["base_model"] == "/data/model"
    assert out["tokenizer"] == "/data/model/tokenizer"
    assert [d["path"] for d in out["datasets"]] == [
        "/data/dataset/train.jsonl",
        "/data/dataset/local.jsonl",
    ]


def test_tokenizer_naming_the_base_model_follows_it():
    spec = parse_spec({"config": CONFIG, "model": {"uri": "s3://models/llama"}})
    out = rewrite(canonical(base_model="meta/llama", tokenizer="meta/llama"), spec)
    assert out["tokenizer"] == "/data/model"


def test_dataset_outside_the_fetched_uri_is_an_error():
    spec = parse_spec({"config": CONFIG, "dataset": {"uri": "s3://data/set"}})
    with pytest.raises(SpecError) as info:
        rewrite(canonical(datasets=[{"path": "s3://elsewhere/x.jsonl"}]), spec)
    assert "spec.config.datasets[0].path" in str(info.value)
    assert "not under spec.dataset.uri (s3://data/set)" in str(info.value)


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {
            "config": {
                "base_model": "meta/llama",
                "tokenizer": "meta/llama",
                "datasets": [{"path": "train.jsonl"}],
                "adapter": "qlora",
                "load_in_4bit": True,
            }
        },
        {
            "dataset": {"uri": "s3://data/alpaca"},
            "model": {"uri": "s3://models/llama"},
            "config": {
                "base_model": "s3://models/llama",
                "tokenizer": "s3://models/llama/tok",
                "datasets": [{"path": "s3://data/alpaca/a.jsonl"}, {"path": "b/c.jsonl"}],
                "output_dir": "./out",
            },
        },
    ],
)
def test_effective_config_parses_back_to_itself(spec):
    """The pod's config is the validated config with paths replaced (no second parse in
    the operator): what the pod parses is exactly what the operator wrote."""
    from finetune_runtime.config import parse_config

    valid = validate_job(job(spec))
    text = effective_config_yaml(valid.config, valid.spec)
    assert parse_config(text).to_yaml() == text
    assert yaml.safe_load(text)["output_dir"] == "/checkpoints"
