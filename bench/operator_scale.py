"""Bench 4 and 5: CR → pods latency and operator memory, the real operator process
against kmock's emulated apiserver (the harness of tests/operator, reused as is).

Per scale, a fresh emulated cluster and a fresh `finetune-operator` process:

1. the operator starts and idles with 0 jobs; its RSS is sampled (the baseline);
2. N FineTuneJobs are created one after another over HTTP;
3. the emulator stamps, on one monotonic clock, when each job was created, when each of
   its worker pods was created, and when the operator wrote `status.phase: Running`;
4. a watch-driven kubelet stand-in (the harness's Kubelet patch, fed by a pod watch
   instead of polling) moves every new pod to Running, as a node would (optional);
5. after every job is Running (or has its pods, without the kubelet stand-in, or a
   timeout), RSS is sampled again.

What is simulated, because it cannot exist here: the kubelet/scheduler (pod phases and
IPs) and the apiserver itself (kmock's emulator, one Python thread in this process).
The emulator's background garbage collector is off: nothing is deleted in this bench.
By default the emulator is made "lean" (`_NameIndex`, `_forget`): its per-request cost
otherwise grows with every stored object and recorded request, and at a few hundred jobs
the bench would time the emulator rather than the operator. `lean=False` runs it as the
operator tests do, for comparison.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from kmock._internal.enums import action

from bench.common import ROOT, percentile, proc_status

sys.path.insert(0, str(ROOT / "tests" / "operator"))

from op_harness import JOBS, Cluster, Kubelet, Operator, free_port, wait_for  # noqa: E402

JOB_LABEL = "finetune.dev/job"
CONFIG = {
    "base_model": "builtin:tiny-llama",
    "datasets": [{"path": "train.jsonl"}],
    "training": {"max_steps": 20},
}


class BenchCluster(Cluster):
    """The harness cluster with its GC poller off and creation/status times recorded."""

    def __init__(self, workdir: Path, lean: bool = True) -> None:
        super().__init__(workdir)
        self.lean = lean
        self.job_created: dict[tuple[str, str], float] = {}
        self.pod_created: dict[tuple[str, str], list[float]] = {}
        self.job_running: dict[tuple[str, str], float] = {}
        self.requests = 0

    def _collect_garbage(self) -> None:
        return  # no deletions here; listing every child twice a second would skew the bench

    def start(self) -> BenchCluster:
        super().start()
        self._record()
        return self

    def _record(self) -> None:
        """Wrap the emulator's create/update bookkeeping to stamp the times (its thread)."""
        server = self.server
        assert server is not None
        create, update, handle = server._prepare_create, server._prepare_update, server._handle
        index = _NameIndex(server) if self.lean else None

        def prepare_create(request: Any) -> None:
            create(request)
            meta = request.data.get("metadata") or {}
            if index is not None:
                index.add(request)
            key = (meta.get("namespace", ""), meta.get("name", ""))
            plural = request.resource.plural
            if plural == "finetunejobs":
                self.job_created[key] = time.monotonic()
            elif plural == "pods":
                job = (meta.get("labels") or {}).get(JOB_LABEL)
                if job:
                    self.pod_created.setdefault((key[0], job), []).append(time.monotonic())

        def prepare_update(request: Any) -> None:
            update(request)
            on_status = request.subresource == "status"
            is_job = request.resource.plural == "finetunejobs"
            if is_job and on_status and _sets_phase(request.data, "Running"):
                key = (request.namespace, request.name)
                self.job_running.setdefault(key, time.monotonic())

        async def counted(request: Any) -> Any:
            self.requests += 1
            try:
                return await handle(request)
            finally:
                if self.lean:
                    _forget(server._requests, request)

        server._prepare_create = prepare_create  # type: ignore[method-assign]
        server._prepare_update = prepare_update  # type: ignore[method-assign]
        server._handle = counted  # type: ignore[method-assign]


class _NameIndex:
    """Reads by name in O(1) and label-selected lists for the emulator.

    kmock finds the object of `GET/PATCH .../NAME` by scanning every object it stores, so
    each request costs O(objects) and a resync of N jobs O(N²): at 500 jobs that, not the
    operator, set the pace. A real apiserver reads by key. The index maps (namespace, name)
    to the emulator's own keys and applies the emulator's own resource check.

    kmock also ignores `labelSelector` (docs/operator-testing.md): the operator's
    `list pods -l finetune.dev/job=NAME` got every pod of the namespace, 1000 pods to
    decode per reconcile at 500 jobs. Lists here honour equality and existence selectors
    (what the operator sends); set-based ones (`in`, `notin`) return everything, as
    before. Watches are left as they are.
    """

    def __init__(self, server: Any) -> None:
        self.store: dict[Any, Any] = server._objects._objects
        self.keys: dict[tuple[str | None, str], list[Any]] = {}
        for key in list(self.store):
            self.keys.setdefault((key[1], key[2]), []).append(key)
        self.scan = server._KubernetesEmulator__get_objs
        server._KubernetesEmulator__get_objs = self.get_objs

    def add(self, request: Any) -> None:
        """Register the key the emulator is about to store a created object under."""
        meta = request.data.get("metadata") or {}
        key = (request.resource, request.namespace or meta.get("namespace"), meta.get("name"))
        bucket = self.keys.setdefault((key[1], key[2]), [])
        if key not in bucket:
            bucket.append(key)

    def get_objs(self, request: Any, strict: bool) -> list[Any]:
        if request.name is None or (request.namespace is None and not strict):
            found = list(self.scan(request, strict))
            selector = (request.params or {}).get("labelSelector")
            if selector and request.action == action.LIST:
                match = label_matcher(selector)
                if match is not None:
                    found = [o for o in found if o.deleted or match(_labels(o.raw))]
            return found
        found = []
        for key in self.keys.get((request.namespace, request.name), ()):
            obj = self.store.get(key)
            if obj is not None and key[0] == request.resource:
                found.append(obj)
        return found


def _labels(raw: Any) -> dict[str, str]:
    return dict(((raw or {}).get("metadata") or {}).get("labels") or {})


def label_matcher(selector: str) -> Any:
    """A predicate over a labels dict for an equality/existence selector
    (`a=b,c==d,e!=f,g,!h`), or None for set-based ones this does not implement."""
    terms: list[tuple[str, str, str]] = []  # (op, key, value)
    for term in (t.strip() for t in selector.split(",")):
        if not term:
            continue
        if "(" in term or " in " in f" {term} " or " notin " in f" {term} ":
            return None
        if "!=" in term:
            key, value = term.split("!=", 1)
            terms.append(("!=", key.strip(), value.strip()))
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            terms.append(("=", key.strip(), value.strip()))
        elif term.startswith("!"):
            terms.append(("absent", term[1:].strip(), ""))
        else:
            terms.append(("present", term, ""))

    def holds(op: str, key: str, value: str, labels: dict[str, str]) -> bool:
        if op == "=":
            return labels.get(key) == value
        if op == "!=":
            return labels.get(key) != value
        return (key in labels) == (op == "present")

    def match(labels: dict[str, str]) -> bool:
        return all(holds(op, key, value, labels) for op, key, value in terms)

    return match


def _forget(requests: list[Any], request: Any) -> None:
    """Drop a served request from the emulator's request log.

    kmock matches every request against every reaction by scanning the requests it has
    recorded (the harness keeps the last 50): ~7 ms a request, the emulator's largest
    cost at scale (see RESULTS.md). Only requests still being served are needed for that
    matching, so the bench keeps just those.
    """
    for i in range(len(requests) - 1, -1, -1):
        if requests[i] is request:
            del requests[i]
            return


def _sets_phase(data: Any, phase: str) -> bool:
    if isinstance(data, dict):
        return (data.get("status") or {}).get("phase") == phase
    if isinstance(data, list):
        for op in data:
            value = op.get("value")
            if op.get("path") == "/status/phase" and value == phase:
                return True
            if op.get("path") == "/status" and isinstance(value, dict):
                return value.get("phase") == phase
    return False


class WatchingKubelet(Kubelet):
    """The harness kubelet, driven by a pod watch (a poll listing thousands of pods every
    0.2 s would dominate the emulator's CPU and the bench would measure the poller)."""

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                with self.cluster.http.get(
                    f"{self.cluster.url}/api/v1/pods",
                    params={"watch": "true"},
                    stream=True,
                    timeout=(5, 2),
                ) as response:
                    for line in response.iter_lines():
                        if self._stop.is_set():
                            return
                        if line:
                            self._on_event(json.loads(line))
            except requests.RequestException:
                continue  # read timeout on a quiet stream, or a reconnect: watch again

    def _on_event(self, event: dict[str, Any]) -> None:
        pod = event.get("object") or {}
        pending = (pod.get("status") or {}).get("phase", "Pending") == "Pending"
        deleting = bool((pod.get("metadata") or {}).get("deletionTimestamp"))
        if self.auto_run and event.get("type") == "ADDED" and pending and not deleting:
            self.run(pod)


class ProfiledOperator(Operator):
    """The same operator process under cProfile (its event-loop thread), for finding the
    bottleneck; the profile is written when it exits on SIGTERM."""

    def __init__(self, *args: Any, profile_path: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.profile_path = profile_path

    def executable(self) -> str:  # type: ignore[override]
        script = self.workdir / "profiled-operator"
        script.write_text(
            "#!/bin/sh\n"
            f'exec "{sys.executable}" -m cProfile -o "{self.profile_path}" '
            '-m finetune_operator.main "$@"\n'
        )
        script.chmod(0o755)
        return str(script)


def job_body(name: str, nodes: int) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {"config": CONFIG, "nodes": nodes},
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _rss_sample(pid: int, seconds: float, interval: float = 0.5) -> dict[str, float]:
    """Median VmRSS over `seconds` (MiB) and the high-water mark at the end."""
    values = []
    deadline = time.monotonic() + seconds
    while True:
        values.append(proc_status(pid)["VmRSS"] / 1024)
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    return {"rss_mib": statistics.median(values), "hwm_mib": proc_status(pid)["VmHWM"] / 1024}


def _summary(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_s": percentile(values, 50),
        "p99_s": percentile(values, 99),
        "max_s": max(values),
    }


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def run_scale(
    jobs: int,
    nodes: int,
    *,
    resync_seconds: float = 5.0,
    timeout: float = 600.0,
    idle_seconds: float = 3.0,
    settle_seconds: float = 3.0,
    namespace: str = "bench",
    profile_dir: Path | None = None,
    lean: bool = True,
    kubelet_runs_pods: bool = True,
) -> dict[str, Any]:
    """Create `jobs` FineTuneJobs of `nodes` workers each against a fresh operator.

    With `kubelet_runs_pods`, the run ends when every job is Running; without, when every
    job has its gang of pods (phase Created), which is what the operator alone decides.
    """
    with tempfile.TemporaryDirectory(prefix="bench-op-") as tmp:
        workdir = Path(tmp)
        cluster = BenchCluster(workdir, lean).start()
        kubelet = WatchingKubelet(cluster)
        kubelet.auto_run = kubelet_runs_pods
        kwargs: dict[str, Any] = {"progress_port": free_port(), "resync_seconds": resync_seconds}
        profiler = None
        if profile_dir is not None:
            import cProfile

            profile_dir.mkdir(parents=True, exist_ok=True)
            tag = f"{jobs}x{nodes}"
            operator: Operator = ProfiledOperator(
                cluster, workdir, profile_path=profile_dir / f"operator-{tag}.prof", **kwargs
            )
            profiler = cProfile.Profile()
            cluster.on_loop(profiler.enable)  # profiles the emulator's own thread
        else:
            operator = Operator(cluster, workdir, **kwargs)
        try:
            operator.start()
            assert operator.proc is not None
            pid = operator.proc.pid
            time.sleep(idle_seconds)  # startup finished, watches established
            idle = _rss_sample(pid, 1.0)
            requests_before = cluster.requests
            operator_cpu0, bench_cpu0 = cpu_seconds(pid), time.process_time()

            started = time.monotonic()
            path = f"{JOBS}/namespaces/{namespace}/finetunejobs"
            for i in range(jobs):
                cluster.post(path, job_body(f"job-{i:05d}", nodes))
            created_s = time.monotonic() - started

            def done() -> bool:
                if kubelet_runs_pods and len(cluster.job_running) < jobs:
                    return False
                ready = [v for v in cluster.pod_created.values() if len(v) >= nodes]
                return len(ready) >= jobs

            timed_out = False
            try:
                wait_for(done, timeout=timeout, interval=0.2, what=f"{jobs} jobs reconciled")
            except AssertionError:
                timed_out = True
            all_done_s = time.monotonic() - started
            operator_cpu = cpu_seconds(pid) - operator_cpu0
            bench_cpu = time.process_time() - bench_cpu0
            time.sleep(settle_seconds)  # a steady state: every job past its first cycles
            loaded = _rss_sample(pid, 2.0)
            metrics = operator.metrics()
            total_requests = cluster.requests - requests_before
            reconciles = _metric(metrics, "finetune_operator_reconcile_duration_seconds_count")
            reconcile_sum = _metric(metrics, "finetune_operator_reconcile_duration_seconds_sum")
            errors = _metric(metrics, "finetune_operator_reconcile_errors_total")
        finally:
            operator.stop()
            kubelet.stop()
            if profiler is not None and profile_dir is not None:
                cluster.on_loop(profiler.disable)
                profiler.dump_stats(profile_dir / f"emulator-{jobs}x{nodes}.prof")
            cluster.stop()
        to_pods = []
        to_running = []
        for key, t0 in cluster.job_created.items():
            pods = cluster.pod_created.get(key, [])
            if len(pods) >= nodes:
                to_pods.append(sorted(pods)[nodes - 1] - t0)
            if key in cluster.job_running:
                to_running.append(cluster.job_running[key] - t0)
        return {
            "jobs": jobs,
            "nodes": nodes,
            "resync_seconds": resync_seconds,
            "kubelet_runs_pods": kubelet_runs_pods,
            "timed_out": timed_out,
            "create_seconds": created_s,
            "all_done_seconds": all_done_s,
            "jobs_with_pods": len(to_pods),
            "jobs_running": len(to_running),
            "cr_to_pods": _summary(to_pods),
            "cr_to_running": _summary(to_running),
            "idle": idle,
            "loaded": loaded,
            "rss_delta_mib": loaded["rss_mib"] - idle["rss_mib"],
            "per_job_kib": (loaded["rss_mib"] - idle["rss_mib"]) * 1024 / jobs if jobs else None,
            "operator_cpu_s": operator_cpu,
            "emulator_cpu_s": bench_cpu,
            "apiserver_requests": total_requests,
            "apiserver_requests_per_s": total_requests / (all_done_s + settle_seconds + 2.0),
            "lean_emulator": lean,
            "reconciles": reconciles,
            "reconcile_errors": errors,
            "reconcile_mean_ms": (
                1000 * reconcile_sum / reconciles if reconciles and reconcile_sum else None
            ),
        }
