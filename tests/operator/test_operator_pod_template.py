"""spec.podTemplate: overrides merged onto the worker pods; reserved fields refused."""

from __future__ import annotations

import kubernetes_validate
import pytest
from op_fixtures import SETTINGS, created_pods, job, ref, run

from finetune_operator import manifests as m
from finetune_operator.reconcile import Observed
from finetune_operator.spec import SpecError, parse_spec

TEMPLATE = {
    "metadata": {"labels": {"team": "nlp"}, "annotations": {"cost-center": "42"}},
    "spec": {
        "runtimeClassName": "nvidia",
        "hostNetwork": True,
        "securityContext": {"runAsUser": 1001, "fsGroup": 2000, "supplementalGroups": [5]},
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"finetune.dev/job": "llama"}},
            }
        ],
        "volumes": [{"name": "datasets", "nfs": {"server": "nfs.example", "path": "/d"}}],
        "volumeMounts": [{"name": "datasets", "mountPath": "/mnt/datasets", "readOnly": True}],
        "env": [{"name": "NCCL_IB_HCA", "value": "mlx5"}],
        "envFrom": [{"configMapRef": {"name": "nccl-tuning"}}],
    },
}


def worker(spec: dict, rank: int = 0) -> dict:
    body = job(spec)
    return m.build_worker_pod(ref(body), parse_spec(body["spec"]), 1, rank, SETTINGS, "digest")


def trainer(pod: dict) -> dict:
    return next(c for c in pod["spec"]["containers"] if c["name"] == "trainer")


def test_pod_template_overrides_are_merged_and_valid():
    pod = worker({"nodes": 2, "podTemplate": TEMPLATE})
    kubernetes_validate.validate(pod, "1.37", strict=True)
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["labels"]["team"] == "nlp" and meta["labels"]["finetune.dev/job"] == "llama"
    assert meta["annotations"] == {"cost-center": "42", "finetune.dev/spec-hash": "digest"}
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["securityContext"] == {
        "runAsNonRoot": True,  # stays
        "seccompProfile": {"type": "RuntimeDefault"},  # stays
        "runAsUser": 1001,
        "fsGroup": 2000,  # overrides the operator's default
        "supplementalGroups": [5],
    }
    assert spec["topologySpreadConstraints"] == TEMPLATE["spec"]["topologySpreadConstraints"]
    assert [v["name"] for v in spec["volumes"]] == [
        "config",
        "checkpoints",
        "data",
        "dshm",
        "datasets",
    ]
    main = trainer(pod)
    assert main["volumeMounts"][-1] == {
        "name": "datasets",
        "mountPath": "/mnt/datasets",
        "readOnly": True,
    }
    assert {"name": "NCCL_IB_HCA", "value": "mlx5"} in main["env"]
    assert main["envFrom"] == [{"configMapRef": {"name": "nccl-tuning"}}]
    assert main["command"] == ["finetune", "launch", "--config", "/etc/finetune/config.yaml"]
    assert len(pod["spec"]["containers"]) == 1  # sidecar-free


def test_pod_template_changes_restart_the_gang_through_the_spec_hash():
    a = run(job({"podTemplate": TEMPLATE}), Observed())
    b = run(job({}), Observed())
    hashes = [
        created_pods(d)[0]["metadata"]["annotations"]["finetune.dev/spec-hash"] for d in (a, b)
    ]
    assert hashes[0] != hashes[1]


def test_pod_template_no_template_no_uid_hard_coded():
    spec = worker({})["spec"]
    assert "runAsUser" not in spec["securityContext"]
    assert "runAsGroup" not in spec["securityContext"]
    body = job({})
    none = m.PodSettings("img", 9400, fs_group=None)
    pod = m.build_worker_pod(ref(body), parse_spec(body["spec"]), 1, 0, none)
    assert pod["spec"]["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ({"metadata": {"labels": {"finetune.dev/rank": "9"}}}, "label 'finetune.dev/rank'"),
        ({"metadata": {"labels": {"app.kubernetes.io/name": "x"}}}, "set by the operator"),
        (
            {"metadata": {"labels": {"kueue.x-k8s.io/queue-name": "q"}}},
            "label 'kueue.x-k8s.io/queue-name'",
        ),
        (
            {"metadata": {"annotations": {"scheduling.k8s.io/group-name": "g"}}},
            "annotation 'scheduling.k8s.io/group-name'",
        ),
        ({"spec": {"volumes": [{"name": "config", "emptyDir": {}}]}}, "volume name 'config'"),
        ({"spec": {"volumes": [{"emptyDir": {}}]}}, "volumes[0] needs a name"),
        (
            {"spec": {"volumeMounts": [{"name": "x", "mountPath": "/data/"}]}},
            "mountPath '/data/'",
        ),
        ({"spec": {"env": [{"name": "FINETUNE_ATTEMPT", "value": "1"}]}}, "FINETUNE_ATTEMPT"),
        ({"spec": {"securityContext": {"runAsNonRoot": False}}}, "non-root"),
        ({"spec": {"securityContext": {"runAsUser": 0}}}, "root"),
        ({"spec": {"containers": [{"name": "sidecar"}]}}, "spec.podTemplate.spec.containers"),
        ({"spec": {"command": ["sh"]}}, "spec.podTemplate.spec.command"),
    ],
)
def test_pod_template_reserved_fields_are_refused_clearly(template, fragment):
    with pytest.raises(SpecError) as err:
        parse_spec({"config": {}, "podTemplate": template})
    assert fragment in str(err.value)
    assert "spec.podTemplate" in str(err.value)
