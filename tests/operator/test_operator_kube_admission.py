"""Admission on the real control plane: the apiserver itself compiles the CRD's CEL rules
(the `cluster` fixture applies the CRD; a rule that does not compile or exceeds the cost
budget fails that) and refuses invalid FineTuneJobs at create time, naming the field; the
PodGroups the operator builds are accepted by the published scheduler CRDs.

Needs the real-control-plane fixtures (tests/kubeharness: `cluster`, `kube_namespace`);
the same rules are evaluated without an apiserver in test_operator_admission.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

kubeharness = pytest.importorskip("kubeharness.api", reason="the real control plane harness")

from kubeharness.cluster import wait_for  # noqa: E402
from op_fixtures import job, ref  # noqa: E402
from test_operator_admission import INVALID, VALID  # noqa: E402

from finetune_operator import manifests as m  # noqa: E402
from finetune_operator.spec import parse_spec  # noqa: E402

pytestmark = pytest.mark.slow
JOBS = "apis/finetune.dev/v1alpha1"
CRDS = Path(__file__).parent / "crds"


def post_job(cluster, ns: str, spec: dict, name: str = "llama", dry_run: bool = True) -> None:
    body = job(spec, name=name, namespace=ns)
    for key in ("uid", "generation"):
        body["metadata"].pop(key, None)
    params = {"dryRun": "All"} if dry_run else {}
    cluster.post(f"{JOBS}/namespaces/{ns}/finetunejobs", body, **params)


@pytest.mark.parametrize("spec", VALID, ids=["minimal", "full", "production"])
def test_admission_kube_accepts_valid_jobs(cluster, kube_namespace, spec):
    post_job(cluster, kube_namespace, {k: v for k, v in spec.items() if v is not None})


@pytest.mark.parametrize(("spec", "fragment"), INVALID.values(), ids=INVALID.keys())
def test_admission_kube_refuses_invalid_jobs_naming_the_field(
    cluster, kube_namespace, spec, fragment
):
    with pytest.raises(kubeharness.ApiError) as refused:
        post_job(cluster, kube_namespace, spec)
    assert refused.value.status == 422
    assert fragment in str(refused.value)


def test_admission_kube_refuses_names_too_long_for_hostnames(cluster, kube_namespace):
    with pytest.raises(kubeharness.ApiError) as refused:
        post_job(cluster, kube_namespace, {"nodes": 10}, name="a" * 55)
    assert "metadata.name is too long" in str(refused.value)
    post_job(cluster, kube_namespace, {"nodes": 10}, name="a" * 54)


@pytest.mark.parametrize("scheduler", ["coscheduling", "volcano"])
def test_podgroup_kube_accepted_by_the_published_crd(cluster, kube_namespace, scheduler):
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if (
            cluster.get(
                f"apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}"
            )
            is None
        ):
            cluster.post("apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    policy = {"scheduler": scheduler, "minAvailable": 2, "priorityClass": "p"}
    body = job({"nodes": 2, "runPolicy": {"schedulingPolicy": policy}}, namespace=kube_namespace)
    group = m.build_pod_group(ref(body), parse_spec(body["spec"]))
    assert group is not None
    group["metadata"].pop("ownerReferences")  # no such job object exists here
    group_api = group["apiVersion"]
    path = f"apis/{group_api}/namespaces/{kube_namespace}/podgroups"
    stored = wait_for(lambda: _create(cluster, path, group), what=f"{group_api} PodGroup accepted")
    assert stored["spec"]["minMember"] == 2


def _create(cluster, path: str, group: dict) -> dict | None:
    try:
        return cluster.post(path, group, dryRun="All")
    except kubeharness.ApiError as exc:
        if exc.status == 404:  # the CRD is not served yet
            return None
        raise


@pytest.mark.parametrize(
    "source",
    [
        {"uri": "s3://AKIAABCDEFGHIJKLMNOP:hunter2@bucket/x"},
        {"uri": "s3://bucket/x", "endpoint": "https://AKIAABCDEFGHIJKLMNOP:hunter2@minio"},
    ],
    ids=["uri", "endpoint"],
)
def test_admission_kube_refusal_never_quotes_credentials(cluster, kube_namespace, source):
    with pytest.raises(kubeharness.ApiError) as refused:
        post_job(cluster, kube_namespace, {"dataset": source})
    text = str(refused.value) + str(refused.value.body)
    assert "must not carry credentials" in text
    assert "hunter2" not in text and "AKIAABCDEFGHIJKLMNOP" not in text
