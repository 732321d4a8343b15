"""Child manifests: valid against the official Kubernetes schemas, and shaped as designed."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest
from op_fixtures import FULL_SPEC, SETTINGS, job, ref, run

from finetune_operator import manifests as m
from finetune_operator.reconcile import Observed
from finetune_operator.spec import parse_spec

K8S_VERSION = "1.37"


SPECS = {
    "minimal": {},
    "full": FULL_SPEC,
    "existing-claim": {"storage": {"existingClaim": "ckpt"}, "nodes": 2},
    "gpus-true": {"resources": {"gpus": True}, "nprocPerNode": 2},
}


def all_children(spec: dict) -> list[dict]:
    body = job(spec)
    claim = {"metadata": {"name": "ckpt"}} if "existingClaim" in json.dumps(spec) else None
    decision = run(body, Observed(claim=claim))
    assert decision.status["phase"] == "Created", decision.status
    return decision.create


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_child_validates_against_the_kubernetes_schema(name):
    children = all_children(SPECS[name])
    assert {c["kind"] for c in children} >= {"ConfigMap", "Service", "Pod"}
    for child in children:
        kubernetes_validate.validate(child, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_child_is_owned_by_the_job(name):
    for child in all_children(SPECS[name]):
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "name": "llama",
            "uid": "uid-llama",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert child["metadata"]["namespace"] == "ml"
        assert child["metadata"]["labels"]["finetune.dev/job"] == "llama"


def test_a_broken_manifest_is_rejected_by_the_validator():
    pod = m.build_worker_pod(ref(job()), parse_spec(job()["spec"]), 1, 0, SETTINGS)
    pod["spec"]["containers"][0]["ports"][0]["containerPort"] = "not-a-port"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def worker(spec: dict, rank: int = 0, attempt: int = 1) -> dict:
    body = job(spec)
    return m.build_worker_pod(ref(body), parse_spec(body["spec"]), attempt, rank, SETTINGS)


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_worker_pod_gang_wiring():
    pod = worker(FULL_SPEC, rank=2, attempt=4)
    spec = pod["spec"]
    assert pod["metadata"]["name"] == "llama-a4-worker-2"
    assert spec["hostname"] == "llama-worker-2" and spec["subdomain"] == "llama"
    assert spec["restartPolicy"] == "Never"
    trainer = spec["containers"][0]
    assert trainer["command"] == ["finetune", "launch", "--config", "/etc/finetune/config.yaml"]
    env = env_of(trainer)
    assert env["PET_NNODES"] == "3"
    assert env["PET_NODE_RANK"] == "2"
    assert env["PET_NPROC_PER_NODE"] == "4"
    assert env["PET_MASTER_ADDR"] == "llama-worker-0.llama.ml.svc"
    assert env["PET_MASTER_PORT"] == "29500"
    assert env["FINETUNE_PROGRESS_PORT"] == "9400"
    assert env["FINETUNE_ATTEMPT"] == "4"
    assert env["FINETUNE_CACHE"] == "/data/cache"
    assert env["NCCL_DEBUG"] == "INFO"
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert "ports" not in trainer  # only rank 0 serves rendezvous and progress
    assert trainer["resources"] == {
        "requests": {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": "4"},
        "limits": {"memory": "160Gi", "nvidia.com/gpu": "4"},
    }
    assert spec["nodeSelector"] == FULL_SPEC["nodeSelector"]
    assert spec["tolerations"] == FULL_SPEC["tolerations"]
    assert spec["affinity"] == FULL_SPEC["affinity"]
    assert spec["priorityClassName"] == "training"
    assert spec["schedulerName"] == "volcano"
    assert spec["serviceAccountName"] == "trainer"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}, {"name": "other"}]


def test_rank_zero_exposes_rendezvous_and_progress_ports():
    ports = worker({}, rank=0)["spec"]["containers"][0]["ports"]
    assert {(p["name"], p["containerPort"]) for p in ports} == {
        ("rendezvous", 29500),
        ("progress", 9400),
    }


def test_worker_pod_is_locked_down():
    spec = worker(FULL_SPEC)["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert "runAsUser" not in spec["securityContext"]  # the image's numeric USER runs
    assert spec["securityContext"]["fsGroup"] == 1000  # PodSettings.fs_group (None: omitted)
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in spec["containers"] + spec["initContainers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}


def test_worker_volumes_and_mounts():
    spec = worker({})["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "llama-config"
    assert volumes["checkpoints"]["persistentVolumeClaim"]["claimName"] == "llama-checkpoints"
    assert volumes["data"] == {"name": "data", "emptyDir": {}}
    assert volumes["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory"}}
    mounts = {v["name"]: v["mountPath"] for v in spec["containers"][0]["volumeMounts"]}
    assert mounts == {
        "config": "/etc/finetune",
        "checkpoints": "/checkpoints",
        "data": "/data",
        "dshm": "/dev/shm",
    }
    assert "initContainers" not in spec


def test_fetch_init_containers_use_secret_references_only():
    init = worker(FULL_SPEC)["spec"]["initContainers"]
    dataset, model = init
    assert dataset["name"] == "fetch-dataset"
    assert dataset["command"] == [
        "finetune",
        "fetch",
        "s3://datasets/alpaca",
        "/data/dataset/",
        "--endpoint-url",
        "https://minio.example.com",
        "--region",
        "eu-west-1",
    ]
    assert model["command"] == ["finetune", "fetch", "s3://models/llama-3-8b", "/data/model/"]
    assert env_of(dataset) == {
        "AWS_ACCESS_KEY_ID": {"secretKeyRef": {"name": "s3", "key": "id"}},
        "AWS_SECRET_ACCESS_KEY": {"secretKeyRef": {"name": "s3", "key": "key"}},
    }
    assert env_of(model)["AWS_SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "s3", "key": "AWS_SECRET_ACCESS_KEY"}
    }
    for container in init:
        assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
        assert container["image"] == FULL_SPEC["image"]
        assert container["imagePullPolicy"] == "IfNotPresent"


def test_no_credentials_end_up_in_plain_values():
    for child in all_children(FULL_SPEC):
        for container in child.get("spec", {}).get("containers", []) + child.get("spec", {}).get(
            "initContainers", []
        ):
            for item in container.get("env", []):
                if item["name"].startswith("AWS_"):
                    assert "value" not in item and "secretKeyRef" in item["valueFrom"]


def test_default_image_comes_from_the_operator():
    assert worker({})["spec"]["containers"][0]["image"] == "runtime:test"


def test_headless_service_for_rendezvous():
    service = m.build_service(ref(job()), 9400)
    assert service["metadata"]["name"] == "llama"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {
        "finetune.dev/job": "llama",
        "app.kubernetes.io/component": "worker",
    }
    assert worker({})["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"


@pytest.mark.parametrize(
    ("storage", "nodes", "expected"),
    [
        ({}, 1, (["ReadWriteOnce"], "10Gi", None)),
        ({}, 2, (["ReadWriteMany"], "10Gi", None)),
        ({"size": "1Ti", "storageClassName": "nfs"}, 1, (["ReadWriteOnce"], "1Ti", "nfs")),
        ({"accessModes": ["ReadWriteOncePod"]}, 1, (["ReadWriteOncePod"], "10Gi", None)),
    ],
)
def test_checkpoint_pvc(storage, nodes, expected):
    body = job({"storage": storage, "nodes": nodes})
    pvc = m.build_pvc(ref(body), parse_spec(body["spec"]))
    assert pvc["metadata"]["name"] == "llama-checkpoints"
    assert pvc["spec"]["accessModes"] == expected[0]
    assert pvc["spec"]["resources"]["requests"]["storage"] == expected[1]
    assert pvc["spec"].get("storageClassName") == expected[2]


def test_config_map_holds_the_effective_config():
    config_map = m.build_config_map(ref(job()), "base_model: x\n")
    assert config_map["metadata"]["name"] == "llama-config"
    assert config_map["data"] == {"config.yaml": "base_model: x\n"}


def test_events_are_valid_and_point_at_the_job():
    from op_fixtures import NOW

    body = m.build_event(
        job(), "Warning", "Restarting", "worker 1 failed " + "x" * 2000, NOW, "ab12"
    )
    kubernetes_validate.validate(body, K8S_VERSION, strict=True)
    assert body["metadata"] == {"name": "llama.ab12", "namespace": "ml"}
    assert body["involvedObject"]["uid"] == "uid-llama"
    assert body["lastTimestamp"] == "2025-01-01T12:00:00Z"
    assert len(body["message"]) == 1024
