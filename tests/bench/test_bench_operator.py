"""The operator benches at tiny scale: the real operator process against the emulated
apiserver (tests/operator's harness). The kubelet and the apiserver are simulated because
they cannot exist here; the bench's emulator changes (request log trimmed to in-flight
requests, reads by name indexed) are checked against the emulator's own answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.operator_scale import BenchCluster, _sets_phase, label_matcher, run_scale


def test_sets_phase_reads_merge_and_json_patches():
    assert _sets_phase({"status": {"phase": "Running"}}, "Running")
    assert not _sets_phase({"status": {"phase": "Created"}}, "Running")
    assert _sets_phase([{"op": "replace", "path": "/status/phase", "value": "Running"}], "Running")
    assert _sets_phase([{"op": "add", "path": "/status", "value": {"phase": "Running"}}], "Running")
    assert not _sets_phase([{"op": "add", "path": "/metadata/x", "value": "Running"}], "Running")


def test_label_matcher():
    labels = {"app": "x", "finetune.dev/job": "j1"}
    assert label_matcher("finetune.dev/job=j1")(labels)
    assert label_matcher("finetune.dev/job==j1,app")(labels)
    assert not label_matcher("finetune.dev/job=j2")(labels)
    assert label_matcher("app!=y,!missing")(labels)
    assert not label_matcher("missing")(labels) and not label_matcher("!app")(labels)
    assert label_matcher("")(labels)
    assert label_matcher("app in (x,y)") is None  # set-based: not filtered


@pytest.fixture()
def lean_cluster(tmp_path: Path):
    cluster = BenchCluster(tmp_path, lean=True).start()
    yield cluster
    cluster.stop()


def test_lean_emulator_reads_by_name_like_the_emulator(lean_cluster: BenchCluster):
    cluster = lean_cluster
    for ns, value in (("a", "1"), ("b", "2")):
        cluster.post(
            f"api/v1/namespaces/{ns}/configmaps",
            {"metadata": {"name": "same"}, "data": {"v": value}},
        )
    cluster.post(
        "api/v1/namespaces/a/services",
        {"metadata": {"name": "same"}, "spec": {"clusterIP": "None"}},
    )
    assert cluster.get("api/v1/namespaces/a/configmaps/same")["data"] == {"v": "1"}
    assert cluster.get("api/v1/namespaces/b/configmaps/same")["data"] == {"v": "2"}
    assert cluster.get("api/v1/namespaces/a/services/same")["spec"] == {"clusterIP": "None"}
    assert cluster.get("api/v1/namespaces/b/services/same") is None  # 404
    assert cluster.get("api/v1/namespaces/c/configmaps/same") is None
    cluster.patch("api/v1/namespaces/b/configmaps/same", {"data": {"v": "3"}})
    assert cluster.get("api/v1/namespaces/b/configmaps/same")["data"] == {"v": "3"}
    assert cluster.get("api/v1/namespaces/a/configmaps/same")["data"] == {"v": "1"}
    names = sorted(cm["metadata"]["namespace"] for cm in cluster.items("api/v1/configmaps"))
    assert names == ["a", "b"]  # lists still scan
    for job in ("j1", "j2", "j1"):
        cluster.post(
            "api/v1/namespaces/a/pods",
            {"metadata": {"generateName": "p-", "labels": {"finetune.dev/job": job}}},
        )
    selected = cluster.items("api/v1/namespaces/a/pods?labelSelector=finetune.dev%2Fjob%3Dj1")
    assert [p["metadata"]["labels"]["finetune.dev/job"] for p in selected] == ["j1", "j1"]
    assert len(cluster.items("api/v1/namespaces/a/pods")) == 3
    # the CRD, created before the index existed, is still found by name
    crd = cluster.get(
        "apis/apiextensions.k8s.io/v1/customresourcedefinitions/finetunejobs.finetune.dev"
    )
    assert crd is not None
    # served requests are dropped from the matching log
    assert cluster.on_loop(lambda: len(cluster.server._requests)) <= 1


@pytest.mark.slow
def test_operator_scale_bench_measures_latency_and_memory():
    result = run_scale(2, 2, resync_seconds=5, timeout=60, idle_seconds=0.5, settle_seconds=0.5)
    assert not result["timed_out"]
    assert result["jobs_with_pods"] == result["jobs_running"] == 2
    for key in ("cr_to_pods", "cr_to_running"):
        summary = result[key]
        assert summary["n"] == 2
        assert 0 < summary["p50_s"] <= summary["p99_s"] <= summary["max_s"]
    assert result["cr_to_pods"]["p50_s"] <= result["cr_to_running"]["p50_s"]
    assert result["idle"]["rss_mib"] > 20 and result["loaded"]["hwm_mib"] > 20
    assert result["per_job_kib"] == pytest.approx(result["rss_delta_mib"] * 1024 / 2)
    assert result["reconciles"] >= 2 and result["reconcile_errors"] == 0
    assert result["apiserver_requests"] > 0 and result["operator_cpu_s"] > 0


@pytest.mark.slow
def test_operator_scale_bench_without_kubelet_on_the_unchanged_emulator():
    result = run_scale(
        2, 1, timeout=60, idle_seconds=0.5, settle_seconds=0.5, lean=False, kubelet_runs_pods=False
    )
    assert not result["timed_out"] and not result["lean_emulator"]
    assert result["jobs_with_pods"] == 2 and result["jobs_running"] == 0
    assert result["cr_to_running"] == {"n": 0}
