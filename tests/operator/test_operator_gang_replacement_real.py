"""Clean gang replacement with real graceful termination, on the real control plane.

Real: the `finetune-operator` process, the apiserver, scheduler and controller-manager
(tests/kubeharness), and graceful deletion as a kubelet does it: the node agent sends
SIGTERM to the pod's processes, waits the pod's terminationGracePeriodSeconds, SIGKILLs
what is left, writes the final status and only then removes the object. Real too: the
runtime's output_dir lock (kernel flock) that rank 0 takes on the checkpoint volume.

Played: the trainer. Each worker's `finetune` is, through PATH in spec.env, the recorder
in gang_recorder.py: it appends its start, a write every 0.1 s, SIGTERM and its exit to a
ledger on the shared checkpoint volume, and on SIGTERM keeps running (and writing) until
the test releases it, as a trainer finishing its step and checkpoint would; one process
may ignore SIGTERM altogether. Real training would cost minutes of CPU per gang and show
nothing more about who runs when (test_operator_real_training covers SIGTERM → checkpoint
→ resume with real torch).

What is shown, per cause (a worker failure under restartPolicy OnFailure, a spec edit,
suspend then an immediate resume; see RANK1_EXIT for what rank 1 does in each), from a
watch of every pod change (apiserver order) and the ledger (write order):
- no pod of attempt 2 exists while any pod of attempt 1 does; each old pod is deleted
  gracefully (deletionTimestamp first) and is seen Running, its process writing, while it
  terminates;
- no old process is alive when a new one starts (same hostnames), no write of an old
  process follows the new gang's first, and rank 0 of each gang got the output_dir lock;
- a process that ignores SIGTERM is SIGKILLed by the kubelet at the end of its grace period;
- cluster DNS (the harness resolver, CoreDNS's rules over EndpointSlices) still answers a
  terminating old pod's IP while it terminates, because the Service publishes not-ready
  addresses as rendezvous needs (a failed pod's name answers nothing); no pod of the new
  gang exists to ask then, and the new gang's workers get the new rank 0's IP;
- a pod whose kubelet never acts on the deletion is force-deleted by the operator once its
  grace period is long over, and only then does the new gang start.
"""

from __future__ import annotations

import collections
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubeharness.cluster import Cluster, wait_for
from kubeharness.node_agent import NodeAgent
from kubeharness.operator_process import Identity, OperatorProcess
from kubeharness.pod_run import PodNotReady
from kubeharness.watch import PodEvent, PodWatch

from finetune_operator.pod_facts import FORCE_DELETE_AFTER_SECONDS

pytestmark = pytest.mark.slow

JOB = "gang"
GRACE = 15  # terminationGracePeriodSeconds: the held processes are released well within it
# What attempt 1's rank 1 does in each scenario (rank 0 always holds on after SIGTERM):
RANK1_EXIT = {
    "failure": 1,  # it fails (the cause of the replacement)
    "spec_change": 137,  # it ignores SIGTERM: SIGKILLed by the kubelet at the grace period
    "suspend_resume": 143,  # it holds on after SIGTERM like rank 0, until released
}
RECORDER = Path(__file__).with_name("gang_recorder.py")
CONFIG = {
    "base_model": "builtin:tiny-llama",
    "datasets": [{"path": "train.jsonl"}],
    "training": {"max_steps": 10},
}


@pytest.fixture(scope="module")
def recorder_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PATH whose `finetune` is the recorder (the rest of the virtualenv behind it)."""
    bin_dir = tmp_path_factory.mktemp("recorder-bin")
    script = bin_dir / "finetune"
    runtime = RECORDER.parents[2] / "runtime"  # this checkout's runtime, as in the image
    script.write_text(
        f'#!/bin/sh\nPYTHONPATH="{runtime}" exec "{sys.executable}" "{RECORDER}" "$@"\n'
    )
    script.chmod(0o755)
    return f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin"


@pytest.fixture()
def kubelet(node: NodeAgent, ns: str) -> Iterator[NodeAgent]:
    node.process_namespaces.add(ns)
    yield node
    node.unresponsive.clear()


def job_spec(path: str, grace: int, ignore_term: str = "", edit: str = "") -> dict[str, Any]:
    env = [{"name": "PATH", "value": path}, {"name": "RECORDER_IGNORE_TERM", "value": ignore_term}]
    if edit:
        env.append({"name": "RECORDER_EDIT", "value": edit})
    return {
        "config": CONFIG,
        "nodes": 2,
        "env": env,
        "runPolicy": {
            "restartPolicy": "OnFailure",
            "backoffLimit": 2,
            "terminationGracePeriodSeconds": grace,
        },
    }


class Gang:
    """One job's view: its checkpoint volume (the ledger) and its pods' processes."""

    def __init__(self, cluster: Cluster, kubelet: NodeAgent, ns: str) -> None:
        self.cluster, self.kubelet, self.ns = cluster, kubelet, ns

    @property
    def claim(self) -> Path:
        return self.kubelet.claim_dir(self.ns, f"{JOB}-checkpoints")

    def ledger(self) -> list[dict[str, Any]]:
        try:
            path = self.claim / "ledger.jsonl"
        except PodNotReady:
            return []
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in lines if line.endswith("}")]

    def seen(self, who: str, event: str) -> bool:
        return any(e["who"] == who and e["event"] == event for e in self.ledger())

    def wait_seen(self, who: str, event: str, timeout: float = 90) -> None:
        wait_for(lambda: self.seen(who, event), timeout, 0.1, what=f"{who} {event}")

    def wait_seen_after(self, who: str, first: str, then: str, timeout: float = 90) -> None:
        """Until `who` has written `then` after its `first` (ordering, not timing)."""

        def seen() -> bool:
            mine = [e["event"] for e in self.ledger() if e["who"] == who]
            return first in mine and then in mine[mine.index(first) :]

        wait_for(seen, timeout, 0.1, what=f"{who} {then} after {first}")

    def run(self, attempt: int, rank: int) -> Any:
        return self.kubelet.run_of(self.ns, f"{JOB}-a{attempt}-worker-{rank}")

    def alive(self, attempt: int, rank: int) -> bool:
        return bool(self.kubelet.processes(self.run(attempt, rank).uid, "trainer"))

    def dns(self, rank: int) -> str | None:
        return self.kubelet.resolve(f"{JOB}-worker-{rank}.{JOB}.{self.ns}.svc")

    def signal(self, attempt: int, rank: int, sig: int) -> None:
        (proc,) = self.kubelet.processes(self.run(attempt, rank).uid, "trainer")
        proc.send_signal(sig)

    def finish(self, attempt: int) -> None:
        (self.claim / f"finish-a{attempt}").touch()
        wait_for(
            lambda: self.cluster.status(self.ns, JOB).get("phase") == "Succeeded",
            60,
            what="the job Succeeded",
        )


def assert_gangs_never_coexist(events: list[PodEvent]) -> None:
    """Replay the watch: after every change, the pods present belong to one attempt."""
    present: dict[str, PodEvent] = {}
    for event in events:
        if event.type == "DELETED":
            present.pop(event.name, None)
        else:
            present[event.name] = event
        attempts = {p.labels["finetune.dev/attempt"] for p in present.values()}
        assert len(attempts) <= 1, f"two gangs' pods at once: {sorted(present)}"


def assert_deleted_gracefully(events: list[PodEvent], name: str) -> list[PodEvent]:
    """The pod's events: marked for deletion first, then removed; returns them."""
    mine = [e for e in events if e.name == name]
    assert mine[-1].type == "DELETED", mine
    marked = [i for i, e in enumerate(mine) if e.deleting]
    assert marked and marked[0] < len(mine) - 1, f"{name} was not deleted gracefully: {mine}"
    return mine


def assert_one_gang_writes_at_a_time(ledger: list[dict[str, Any]]) -> None:
    first_new = next(i for i, line in enumerate(ledger) if line["attempt"] == 2)
    late = [line for line in ledger[first_new:] if line["attempt"] == 1]
    assert late == [], f"attempt 1 wrote after attempt 2 started: {late[:3]}"
    starts = {line["who"]: line for line in ledger if line["event"] == "start"}
    assert set(starts) == {"a1-r0", "a1-r1", "a2-r0", "a2-r1"}
    for who in ("a2-r0", "a2-r1"):
        assert starts[who]["overlapping"] == [], f"{who} started next to {starts[who]}"
    for attempt in (1, 2):  # the same hostnames, one gang after the other
        assert starts[f"a{attempt}-r0"]["host"] == f"{JOB}-worker-0"
        assert starts[f"a{attempt}-r0"]["lock"] == "held"


@pytest.mark.parametrize("cause", ["failure", "spec_change", "suspend_resume"])
def test_gang_replacement_waits_for_graceful_termination(
    cluster: Cluster,
    kubelet: NodeAgent,
    operator: OperatorProcess,
    recorder_path: str,
    ns: str,
    cause: str,
):
    gang = Gang(cluster, kubelet, ns)
    ignores = "a1-r1" if cause == "spec_change" else ""
    cluster.create_job(ns, JOB, job_spec(recorder_path, GRACE, ignore_term=ignores))
    gang.wait_seen("a1-r0", "start")
    gang.wait_seen("a1-r1", "start")
    wait_for(lambda: cluster.status(ns, JOB).get("phase") == "Running", what="attempt 1 runs")
    old_ip = gang.run(1, 0).ip
    assert gang.dns(0) == old_ip
    watch = PodWatch(cluster.api, ns).start()

    if cause == "failure":
        gang.signal(1, 1, signal.SIGUSR1)  # rank 1 exits 1: retried under OnFailure
    elif cause == "spec_change":
        cluster.patch_job(ns, JOB, {"spec": job_spec(recorder_path, GRACE, ignores, edit="2")})
    else:
        cluster.patch_job(ns, JOB, {"spec": {"runPolicy": {"suspend": True}}})
        wait_for(
            lambda: (
                (pods := cluster.pods(ns))
                and all(p["metadata"].get("deletionTimestamp") for p in pods)
            ),
            what="the suspended gang terminating",
        )
        cluster.patch_job(ns, JOB, {"spec": {"runPolicy": {"suspend": False}}})

    # Rank 0 got SIGTERM and is still running (and writing), held by the test.
    gang.wait_seen("a1-r0", "term")
    if cause != "failure":
        gang.wait_seen("a1-r1", "term-ignored" if ignores else "term")
    wait_for(
        lambda: (
            cluster.status(ns, JOB).get("attempt") == 2
            and any(
                c["reason"] == "WaitingForOldGang"
                for c in cluster.status(ns, JOB).get("conditions", [])
            )
        ),
        what="the operator waiting for the old gang",
    )
    left = cluster.pods(ns)
    assert left and all(p["metadata"]["labels"]["finetune.dev/attempt"] == "1" for p in left)
    assert all(p["metadata"].get("deletionTimestamp") for p in left)
    assert gang.alive(1, 0)
    # DNS: a terminating pod still answers (publishNotReadyAddresses, as CoreDNS would),
    # but only the old gang exists to ask. A failed pod does not.
    assert gang.dns(0) == old_ip
    assert gang.dns(1) == (None if cause == "failure" else gang.run(1, 1).ip)
    # Released only once rank 0 has written after its SIGTERM (a starved process may not
    # have been scheduled yet on a loaded machine): the write is what is asserted below.
    gang.wait_seen_after("a1-r0", "term", "beat")
    (gang.claim / "release").touch()  # the held processes finish their "checkpoint"

    gang.wait_seen("a2-r0", "start")
    gang.wait_seen("a2-r1", "start")
    new_dns = gang.dns(0)
    gang.finish(2)
    events = watch.stop()

    assert_gangs_never_coexist(events)
    rank0 = assert_deleted_gracefully(events, f"{JOB}-a1-worker-0")
    assert any(e.deleting and e.phase == "Running" for e in rank0)  # terminating, alive
    assert_deleted_gracefully(events, f"{JOB}-a1-worker-1")
    ledger = gang.ledger()
    assert_one_gang_writes_at_a_time(ledger)
    mine = [line["event"] for line in ledger if line["who"] == "a1-r0"]
    after_term = mine[mine.index("term") :]
    assert "beat" in after_term and after_term[-1] == "stop", after_term
    assert gang.run(1, 0).containers["trainer"].exit_code == 143
    assert gang.run(1, 1).containers["trainer"].exit_code == RANK1_EXIT[cause]
    rank1_last = [line["event"] for line in ledger if line["who"] == "a1-r1"][-1]
    assert rank1_last == {"failure": "fail", "suspend_resume": "stop"}.get(cause, "beat")

    new_ip = gang.run(2, 0).ip
    assert new_ip != old_ip and new_dns == new_ip
    starts = {line["who"]: line for line in ledger if line["event"] == "start"}
    assert starts["a2-r1"]["master"] == starts["a2-r0"]["master"] == new_ip
    status = cluster.status(ns, JOB)
    assert status["attempt"] == 2 and status["restarts"] == (1 if cause == "failure" else 0)
    reasons = [e["reason"] for e in cluster.events(ns)]
    expected = {"failure": "Restarting", "spec_change": "SpecChanged"}.get(cause, "Resumed")
    assert expected in reasons, reasons


def test_gang_replacement_force_deletes_a_pod_its_kubelet_never_stops(
    cluster: Cluster,
    kubelet: NodeAgent,
    operator: OperatorProcess,
    operator_identity: Identity,
    recorder_path: str,
    ns: str,
):
    """Rank 0's node hangs on the deletion (no SIGTERM, the object stays). The operator
    force-deletes it FORCE_DELETE_AFTER_SECONDS after its grace period ended; the new gang
    is created only after that."""
    gang = Gang(cluster, kubelet, ns)
    cluster.create_job(ns, JOB, job_spec(recorder_path, grace=1))
    gang.wait_seen("a1-r0", "start")
    gang.wait_seen("a1-r1", "start")
    wait_for(lambda: cluster.status(ns, JOB).get("phase") == "Running", what="attempt 1 runs")
    stuck = f"{JOB}-a1-worker-0"
    kubelet.unresponsive.add(stuck)
    watch = PodWatch(cluster.api, ns).start()
    gang.signal(1, 1, signal.SIGUSR1)

    wait_for(
        lambda: (
            (p := cluster.get(f"api/v1/namespaces/{ns}/pods/{stuck}"))
            and p["metadata"].get("deletionTimestamp")
        ),
        what="rank 0 marked for deletion",
    )
    assert not gang.seen("a1-r0", "term")  # its kubelet never signalled it
    gang.wait_seen("a2-r0", "start", timeout=FORCE_DELETE_AFTER_SECONDS + 60)
    gang.wait_seen("a2-r1", "start")
    gang.finish(2)
    events = watch.stop()

    assert_gangs_never_coexist(events)
    assert_deleted_gracefully(events, stuck)  # marked first, removed by the force delete
    assert_one_gang_writes_at_a_time(gang.ledger())
    assert f"force-deleted Pod {ns}/{stuck}" in operator.logs()
    deletes = collections.Counter(  # who removed or marked the pod (audit log)
        event["user"]["username"]
        for event in cluster.audit()
        if event.get("verb") == "delete"
        and (event.get("objectRef") or {}).get("name") == stuck
        and (event.get("objectRef") or {}).get("namespace") == ns
        and (event.get("responseStatus") or {}).get("code") == 200
    )
    assert f"system:node:{kubelet.node_name}" not in deletes, deletes  # never confirmed
    assert deletes[operator_identity.username] >= 2, deletes  # graceful, then forced
    assert cluster.status(ns, JOB)["restarts"] == 1
