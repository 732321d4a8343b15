"""The kopf shell: one daemon per FineTuneJob runs reconcile cycles; watches wake it.

Each job's daemon loops `Controller.reconcile_once` every `resync` seconds and
immediately when one of its pods changes or its spec changes (so pod phase
transitions are acted on at once). One loop per job means cycles of a job never
overlap. The blocking Kubernetes client runs in a thread pool.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import kopf

from finetune_operator import constants as c
from finetune_operator.controller import Controller
from finetune_operator.kube import Kube
from finetune_operator.manifests import PodSettings
from finetune_operator.metrics import Metrics

log = logging.getLogger("finetune_operator")


@dataclass
class OperatorConfig:
    default_image: str = "ghcr.io/finetune-operator/finetune-runtime:0.1.0"
    progress_port: int = 9400
    metrics_port: int | None = 8080
    resync_seconds: float = 5.0
    progress_timeout: float = 2.0
    workers: int = 8


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
    settings.persistence.finalizer = f"{c.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=c.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=c.GROUP, key="last-handled-configuration"
    )
    settings.watching.reconnect_backoff = 1.0
    settings.networking.request_timeout = 30.0
    state.executor = ThreadPoolExecutor(
        max_workers=state.config.workers, thread_name_prefix="reconcile"
    )
    kube = await asyncio.get_running_loop().run_in_executor(state.executor, Kube.from_environment)
    state.controller = Controller(
        kube=kube,
        metrics=state.metrics,
        settings=PodSettings(state.config.default_image, state.config.progress_port),
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
    if state.executor is not None:
        state.executor.shutdown(wait=False, cancel_futures=True)


async def _sleep(wake: asyncio.Event, stopped: kopf.DaemonStopped, seconds: float) -> None:
    """Until the resync period ends, the job is woken, or the daemon is asked to stop."""

    async def until_stopped() -> None:
        await stopped.wait()

    waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(until_stopped())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


# On stop the loop exits by itself (after the cycle in flight); kopf re-checks after the
# backoff, so it is short: it delays the release of a deleted job's finalizer.
@kopf.daemon(c.GROUP, c.VERSION, c.PLURAL, cancellation_backoff=1.0, cancellation_timeout=10.0)
async def job_loop(
    namespace: str | None, name: str, stopped: kopf.DaemonStopped, memo: Any, **_: Any
) -> None:
    """Reconcile one job until it is deleted or the operator stops."""
    assert namespace is not None  # FineTuneJobs are namespaced
    state = _state(memo)
    key = (namespace, name)
    wake = state.wakers.setdefault(key, asyncio.Event())
    loop = asyncio.get_running_loop()
    assert state.controller is not None
    try:
        while not stopped:
            wake.clear()
            gone = await loop.run_in_executor(
                state.executor, state.controller.reconcile_once, namespace, name
            )
            if gone:
                break
            await _sleep(wake, stopped, state.config.resync_seconds)
    finally:
        log.info("stopped reconciling %s/%s (%s)", namespace, name, stopped.reason or "gone")
        state.wakers.pop(key, None)
        state.spec_digests.pop(key, None)
        state.metrics.forget(key)


@kopf.on.event(c.GROUP, c.VERSION, c.PLURAL)
async def job_changed(
    namespace: str | None, name: str, spec: kopf.Spec, meta: kopf.Meta, memo: Any, **_: Any
) -> None:
    """Wake the job's loop when its spec (or deletion) changed, not on our status writes."""
    assert namespace is not None  # FineTuneJobs are namespaced
    state = _state(memo)
    payload = json.dumps([dict(spec), meta.get("deletionTimestamp")], sort_keys=True, default=str)
    digest = hashlib.sha256(payload.encode()).hexdigest()
    if state.spec_digests.get((namespace, name)) != digest:
        state.spec_digests[(namespace, name)] = digest
        state.wake(namespace, name)


@kopf.on.event("", "v1", "pods", labels={c.LABEL_MANAGED_BY: c.MANAGER, c.LABEL_JOB: kopf.PRESENT})
async def pod_changed(
    namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any
) -> None:
    """A worker pod changed (phase, IP, deletion): reconcile its job now."""
    if namespace is not None:
        _state(memo).wake(namespace, labels[c.LABEL_JOB])
