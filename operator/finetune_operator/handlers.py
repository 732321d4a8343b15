"""The kopf shell: one asyncio loop per FineTuneJob runs reconcile cycles; watches wake it.

Each job's loop runs `Controller.reconcile_once` every `resync` seconds and immediately
when one of its pods changes or its spec changes (so pod phase transitions are acted on
at once). One loop per job means cycles of a job never overlap. The blocking Kubernetes
client runs in a thread pool.

The loops are plain tasks started from the job watch, not kopf daemons: a kopf daemon
needs a finalizer on every job, and a finalizer nobody removes (operator uninstalled,
then the CRD deleted) hangs the deletion forever. Children need no finalizer either:
they are owner-referenced and garbage-collected with the job. kopf removes the
finalizer that older versions added, since no handler requires it any more.

The pod watch filters on the server (`settings.watching.label_selectors`): only the
operator's worker pods are streamed, not every pod of the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import kopf

from finetune_operator import constants as c
from finetune_operator import scheduling as g
from finetune_operator.controller import Controller
from finetune_operator.kube import Kube
from finetune_operator.manifests import PodSettings
from finetune_operator.metrics import Metrics
from finetune_runtime import contract

log = logging.getLogger("finetune_operator")


@dataclass
class OperatorConfig:
    default_image: str = "ghcr.io/finetune-operator/finetune-runtime:0.1.0"
    progress_port: int = contract.PROGRESS_PORT
    metrics_port: int | None = 8080
    resync_seconds: float = 5.0
    progress_timeout: float = 2.0
    workers: int = 8
    worker_fs_group: int | None = c.DEFAULT_FS_GROUP


@dataclass
class State:
    """What the handlers share, kept in kopf's memo."""

    config: OperatorConfig
    bind_address: str = "0.0.0.0"
    metrics: Metrics = field(default_factory=Metrics)
    controller: Controller | None = None
    executor: ThreadPoolExecutor | None = None
    wakers: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    spec_digests: dict[tuple[str, str], str] = field(default_factory=dict)
    loops: dict[tuple[str, str], asyncio.Task[None]] = field(default_factory=dict)
    stopping: set[tuple[str, str]] = field(default_factory=set)

    def wake(self, namespace: str, name: str) -> None:
        event = self.wakers.get((namespace, name))
        if event is not None:
            event.set()


def _state(memo: Any) -> State:
    state = memo.get("state") if hasattr(memo, "get") else getattr(memo, "state", None)
    if not isinstance(state, State):
        raise RuntimeError("finetune_operator.main did not provide the operator state in memo")
    return state


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    state = _state(memo)
    settings.posting.enabled = False  # the reconciler posts its own, curated events
    # No handler needs a finalizer; naming the one older versions added lets kopf remove it.
    settings.persistence.finalizer = f"{c.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=c.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=c.GROUP, key="last-handled-configuration"
    )
    settings.watching.reconnect_backoff = 1.0
    settings.watching.label_selectors["", "v1", "pods"] = POD_SELECTOR
    settings.networking.request_timeout = 30.0
    state.executor = ThreadPoolExecutor(
        max_workers=state.config.workers, thread_name_prefix="reconcile"
    )
    kube = await asyncio.get_running_loop().run_in_executor(state.executor, Kube.from_environment)
    state.controller = Controller(
        kube=kube,
        metrics=state.metrics,
        settings=PodSettings(
            state.config.default_image, state.config.progress_port, state.config.worker_fs_group
        ),
        progress_timeout=state.config.progress_timeout,
    )
    if state.config.metrics_port:
        state.metrics.serve(state.config.metrics_port, addr=state.bind_address)
    log.info(
        "finetune-operator ready: resync every %ss, metrics on :%s",
        state.config.resync_seconds,
        state.config.metrics_port,
    )


@kopf.on.cleanup()
async def cleanup(memo: Any, **_: Any) -> None:
    state = _state(memo)
    loops = list(state.loops.values())
    for task in loops:
        task.cancel()
    await asyncio.gather(*loops, return_exceptions=True)
    if state.executor is not None:
        state.executor.shutdown(wait=False, cancel_futures=True)


async def _sleep(wake: asyncio.Event, seconds: float) -> None:
    """Until the resync period ends or the job is woken (a change, or a stop request)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), timeout=seconds)


async def job_loop(state: State, namespace: str, name: str) -> None:
    """Reconcile one job until it is gone (deleted) or the operator stops."""
    key = (namespace, name)
    wake = state.wakers.setdefault(key, asyncio.Event())
    loop = asyncio.get_running_loop()
    assert state.controller is not None
    reason = "gone"
    try:
        while key not in state.stopping:
            wake.clear()
            gone = await loop.run_in_executor(
                state.executor, state.controller.reconcile_once, namespace, name
            )
            if gone:
                break
            await _sleep(wake, state.config.resync_seconds)
    except asyncio.CancelledError:
        reason = "operator stopping"
        raise
    finally:
        log.info("stopped reconciling %s/%s (%s)", namespace, name, reason)
        state.wakers.pop(key, None)
        state.spec_digests.pop(key, None)
        state.loops.pop(key, None)
        state.stopping.discard(key)
        state.metrics.forget(key)
        state.controller.forget(namespace, name)


@kopf.on.event(c.GROUP, c.VERSION, c.PLURAL)
async def job_changed(
    namespace: str | None,
    name: str,
    spec: kopf.Spec,
    meta: kopf.Meta,
    memo: Any,
    type: str | None = None,  # noqa: A002 - kopf's name for the watch event type
    **_: Any,
) -> None:
    """Start the job's loop on first sight; wake it when its spec (or deletion) changed,
    not on our status writes; stop it when the job is gone."""
    assert namespace is not None  # FineTuneJobs are namespaced
    state = _state(memo)
    key = (namespace, name)
    if type == "DELETED":
        if key in state.loops:
            state.stopping.add(key)
            state.wake(namespace, name)
        return
    state.stopping.discard(key)  # deleted and created again: the running loop carries on
    if key not in state.loops:
        state.loops[key] = asyncio.create_task(job_loop(state, namespace, name))
    payload = json.dumps([dict(spec), meta.get("deletionTimestamp")], sort_keys=True, default=str)
    digest = hashlib.sha256(payload.encode()).hexdigest()
    if state.spec_digests.get(key) != digest:
        state.spec_digests[key] = digest
        state.wake(namespace, name)


# Server-side: the watch only streams the operator's worker pods (see startup()).
POD_SELECTOR = f"{c.LABEL_MANAGED_BY}={c.MANAGER},{c.LABEL_JOB}"


@kopf.on.event("", "v1", "pods", labels={c.LABEL_MANAGED_BY: c.MANAGER, c.LABEL_JOB: kopf.PRESENT})
async def pod_changed(
    namespace: str | None, labels: Mapping[str, str], body: Any, memo: Any, **_: Any
) -> None:
    """A worker pod changed (phase, IP, deletion): reconcile its job now. A worker deleted
    while Kueue still queues its gang (also after its job is gone) releases the gang's
    Workload, else Kueue's finalizer keeps the pods forever."""
    if namespace is None:
        return
    state = _state(memo)
    state.wake(namespace, labels[c.LABEL_JOB])
    workload = g.kueue_workload_to_release(dict(body))
    if workload is not None and state.controller is not None:
        kube = state.controller.kube
        await asyncio.get_running_loop().run_in_executor(
            state.executor,
            kube.delete_custom,
            g.KUEUE_WORKLOAD_API,
            g.KUEUE_WORKLOADS,
            namespace,
            workload,
        )
