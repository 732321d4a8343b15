"""One reconcile cycle of one job: observe over the API, decide (pure), act.

This is the whole of the operator's I/O around `reconcile.reconcile`. It never raises
for a bad job (that is a status condition); API failures are logged, counted and
retried on the next cycle.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.rest import ApiException

from finetune_operator import names
from finetune_operator import pod_facts as pf
from finetune_operator import status as s
from finetune_operator.failure_policy import LOG_BYTES, LOG_LINES, log_container
from finetune_operator.kube import Kube
from finetune_operator.metrics import Metrics
from finetune_operator.parsed import ParsedJob, parse_job
from finetune_operator.pod_parts import PodSettings
from finetune_operator.progress_client import fetch_progress
from finetune_operator.reconcile import Decision, Observed, reconcile
from finetune_operator.redact import redact
from finetune_operator.scheduling import pod_group_manifest
from finetune_operator.startup import Rejection

log = logging.getLogger("finetune_operator.controller")

FAILURE_REASONS = (
    "InvalidSpec",
    "BackoffLimitExceeded",
    "DeadlineExceeded",
    "PermanentFailure",
    "StartupTimeout",
)
CONFLICT_RETRIES = 3


class StatusConflict(Exception):
    """The job changed after it was read: the decision is stale and must not be acted on."""


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """An RFC 7386 merge patch turning `old` into `new` (None deletes a key)."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif before != value or key not in old:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


@dataclass
class Controller:
    kube: Kube
    metrics: Metrics
    settings: PodSettings
    progress_timeout: float = 2.0
    # Creates the API server refused, per job, handed to the next cycle's reconcile.
    rejections: dict[tuple[str, str], list[Rejection]] = field(default_factory=dict)

    def observe(self, job: dict[str, Any], parsed: ParsedJob | None = None) -> Observed:
        """Read the job's children (and rank 0's progress) as `reconcile` needs them."""
        parsed = parsed if parsed is not None else parse_job(job)
        ref, status = parsed.ref, job.get("status") or {}
        namespace = ref.namespace
        pods = self.kube.list_pods(namespace, ref.name, ref.uid)
        progress = None
        if status.get("phase") in (s.CREATED, s.RUNNING, s.RESTARTING):
            url = pf.progress_url(pods, int(status.get("attempt") or 0))
            if url is not None:
                progress = fetch_progress(url, timeout=self.progress_timeout)
        serving, serving_service = None, None
        if status.get("phase") == s.SUCCEEDED and (parsed.serve_requested or status.get("serving")):
            serving = self.kube.get_child("Deployment", namespace, names.serving_name(ref))
            serving_service = self.kube.get_child("Service", namespace, names.serving_name(ref))
        return Observed(
            serving=serving,
            serving_service=serving_service,
            pods=pods,
            config_map=self.kube.get_child("ConfigMap", namespace, names.config_map_name(ref)),
            service=self.kube.get_child("Service", namespace, names.service_name(ref)),
            claim=self.kube.get_child("PersistentVolumeClaim", namespace, parsed.claim_name),
            progress=progress,
            pod_group=self._pod_group(parsed),
            rejections=self.rejections.pop((namespace, ref.name), []),
            logs=self._failed_logs(namespace, pods, status),
        )

    def _pod_group(self, parsed: ParsedJob) -> dict[str, Any] | None:
        ref, policy = parsed.ref, parsed.run_policy.scheduling_policy
        wanted = pod_group_manifest(ref.name, ref.namespace, 1, policy, {})
        if wanted is None:
            return None
        return self.kube.get_custom(wanted["apiVersion"], "podgroups", ref.namespace, ref.name)

    def _failed_logs(
        self, namespace: str, pods: list[dict[str, Any]], status: dict[str, Any]
    ) -> dict[str, str]:
        """Last log lines of the current gang's failed pods (bounded; read only while the
        job is active, so a finished job costs no log reads)."""
        if status.get("phase") not in s.ACTIVE_PHASES:
            return {}
        attempt = int(status.get("attempt") or 0)
        logs = {}
        for pod in pods:
            if pf.attempt_of(pod) == attempt and pf.phase_of(pod) == s.FAILED:
                name = pf.name_of(pod)
                try:
                    text = self.kube.pod_log(
                        namespace, name, log_container(pod), LOG_LINES, LOG_BYTES
                    )
                except Exception as exc:  # noqa: BLE001 - the log only adds detail
                    log.warning("reading the log of pod %s/%s failed: %s", namespace, name, exc)
                    continue
                logs[name] = text
        return logs

    def reconcile_once(self, namespace: str, name: str) -> bool:
        """Run one cycle; True when the job is gone (the caller stops looping).

        The status is written only if the job is still the version the decision was made
        from; when someone else wrote it in between (an edit, another replica), the cycle
        reads it again and decides afresh, a few times, before waiting for the next one."""
        started = time.perf_counter()
        try:
            for _ in range(CONFLICT_RETRIES):
                job = self.kube.get_job(namespace, name)
                if job is None:
                    return True
                parsed = parse_job(job)  # once per cycle, for observe and reconcile
                observed = self.observe(job, parsed)
                decision = reconcile(job, observed, datetime.now(UTC), self.settings, parsed)
                # Metrics first: once the status patch is visible, the metrics agree with it
                # (a conflicting cycle is decided again and overwrites them).
                self.metrics.observe(
                    (namespace, name), decision.status.get("phase"), decision.status.get("progress")
                )
                try:
                    return self.act(job, decision)
                except StatusConflict:
                    log.info("%s/%s changed while reconciling; deciding again", namespace, name)
            return False
        except Exception:
            self.metrics.reconcile_errors.inc()
            log.exception("reconcile of %s/%s failed; retrying on the next cycle", namespace, name)
            return False
        finally:
            self.metrics.reconcile_seconds.observe(time.perf_counter() - started)

    def act(self, job: dict[str, Any], decision: Decision) -> bool:
        meta = job["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        patch = merge_patch(job.get("status") or {}, decision.status)
        if patch:
            try:
                self.kube.patch_job_status(namespace, name, patch, meta.get("resourceVersion"))
            except ApiException as exc:
                if exc.status == 404:
                    return True
                if exc.status == 409:
                    raise StatusConflict from None
                raise
        now = datetime.now(UTC)
        for ref in decision.delete:
            self.kube.delete(ref.kind, namespace, ref.name)
            log.info("deleted %s %s/%s", ref.kind, namespace, ref.name)
        for ref in decision.force_delete:
            self.kube.delete(ref.kind, namespace, ref.name, force=True)
            log.warning("force-deleted %s %s/%s (grace period over)", ref.kind, namespace, ref.name)
        refused = []
        for manifest in decision.create:
            kind, child = manifest["kind"], manifest["metadata"]["name"]
            try:
                if self.kube.create(manifest):
                    log.info("created %s %s/%s", kind, namespace, child)
            except ApiException as exc:
                # Reported through the next reconcile (condition, backoff, one event per
                # reason), not as an event per refused create per cycle.
                message = redact(_api_message(exc))
                log.warning("creating %s %s/%s refused: %s", kind, namespace, child, message)
                refused.append(Rejection(kind, child, int(exc.status or 0), message))
        if refused:
            self.rejections[(namespace, name)] = refused
        for manifest in decision.update:
            self.kube.update(manifest)
            log.info("updated %s %s/%s", manifest["kind"], namespace, manifest["metadata"]["name"])
        for event in decision.events:
            self._event(job, event.type, event.reason, event.message, now)
            self.metrics.transition(
                event.reason, event.reason if event.reason in FAILURE_REASONS else None
            )
        if decision.delete_job:
            self.kube.delete_job(namespace, name)
            log.info("deleted FineTuneJob %s/%s (ttlSecondsAfterFinished)", namespace, name)
            return True
        return False

    def forget(self, namespace: str, name: str) -> None:
        self.rejections.pop((namespace, name), None)

    def _event(
        self, job: dict[str, Any], type_: str, reason: str, message: str, now: datetime
    ) -> None:
        try:
            self.kube.post_event(job, type_, reason, message, now)
        except Exception as exc:  # noqa: BLE001 - events are best effort
            log.warning("posting event %s failed: %s", reason, exc)


def _api_message(exc: ApiException) -> str:
    """The API server's own explanation (Status.message), else the HTTP reason."""
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or exc.reason or "refused")
