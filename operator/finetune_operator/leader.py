"""Leader election over a coordination.k8s.io/v1 Lease, as client-go's leaderelection does.

Several operator replicas run; one holds the Lease and reconciles, the others wait. The
decision (`decide`) is pure; `LeaseElector` does the API calls with optimistic
concurrency (a patch carries the resourceVersion it read as a precondition, so two
candidates can never both win). The leader renews every `retry` seconds; if it cannot
renew for `renew_deadline` (< `duration`) it stops leading before anybody else may take
over. On a clean shutdown it releases the Lease, so a standby takes over at once instead
of after `duration`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from finetune_operator.status import parse_time

log = logging.getLogger("finetune_operator.leader")

Action = Literal["create", "take", "renew", "wait"]
_LEASES = ("coordination.k8s.io", "v1", "leases")


@dataclass(frozen=True)
class LeaseTiming:
    duration: float = 15.0  # a standby may take over this long after the last renewal
    renew_deadline: float = 10.0  # the leader gives up if it could not renew for this long
    retry: float = 2.0  # how often candidates try and the leader renews

    @classmethod
    def for_duration(cls, duration: float) -> LeaseTiming:
        """client-go's proportions (15 s / 10 s / 2 s) for another lease duration."""
        return cls(duration, duration * 2 / 3, duration * 2 / 15)


def micro_time(when: datetime) -> str:
    """A MicroTime as the API expects it (RFC 3339 with microseconds)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def decide(lease: dict[str, Any] | None, identity: str, now: datetime) -> Action:
    """What a candidate does about the Lease as it reads it now. Pure."""
    if lease is None:
        return "create"
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity")
    if holder == identity:
        return "renew"
    renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))
    duration = spec.get("leaseDurationSeconds")
    if not holder or renewed is None or not isinstance(duration, int | float):
        return "take"  # released, or never properly held
    return "take" if (now - renewed).total_seconds() >= duration else "wait"


def lease_spec(
    lease: dict[str, Any] | None, identity: str, now: datetime, action: Action, timing: LeaseTiming
) -> dict[str, Any]:
    """The Lease spec after `action` by `identity`."""
    old = (lease or {}).get("spec") or {}
    spec = {
        "holderIdentity": identity,
        "leaseDurationSeconds": max(1, round(timing.duration)),
        "renewTime": micro_time(now),
        # The client hands back times in its own format: write them as MicroTime again.
        "acquireTime": micro_time(parse_time(old.get("acquireTime")) or now)
        if action == "renew"
        else micro_time(now),
        "leaseTransitions": int(old.get("leaseTransitions") or 0) + (action == "take"),
    }
    return {k: v for k, v in spec.items() if v is not None}


def default_identity() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


class LeaseElector:
    """Acquire, renew and release one Lease through the CoordinationV1 API."""

    def __init__(
        self,
        api: Any,  # kubernetes.client.CustomObjectsApi: plain dicts both ways (the typed
        # CoordinationV1Api re-serialises MicroTimes without the microseconds the API needs)
        namespace: str,
        name: str,
        identity: str,
        timing: LeaseTiming | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.api, self.namespace, self.name, self.identity = api, namespace, name, identity
        self.timing = timing or LeaseTiming()
        self.clock = clock

    def _read(self) -> dict[str, Any] | None:
        from kubernetes.client.rest import ApiException

        try:
            lease = self.api.get_namespaced_custom_object(
                *_LEASES[:2], self.namespace, _LEASES[2], self.name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(lease)

    def try_once(self) -> bool:
        """One attempt to become or stay the leader; True while we hold the Lease."""
        from kubernetes.client.rest import ApiException

        now = self.clock()
        lease = self._read()
        action = decide(lease, self.identity, now)
        if action == "wait":
            return False
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": lease_spec(lease, self.identity, now, action, self.timing),
        }
        try:
            if lease is None:
                self.api.create_namespaced_custom_object(
                    *_LEASES[:2], self.namespace, _LEASES[2], body
                )
            else:
                self._patch(lease, body["spec"])
        except ApiException as exc:
            if exc.status == 409:  # another candidate wrote first
                return False
            raise
        if action != "renew":
            log.info("became the leader (Lease %s/%s)", self.namespace, self.name)
        return True

    def _patch(self, lease: dict[str, Any], spec: dict[str, Any]) -> None:
        """Write `spec` only if the Lease is still the version we read (else 409): the
        resourceVersion in a patch is a precondition, as in an update."""
        version = lease["metadata"]["resourceVersion"]
        removed = {key: None for key in (lease.get("spec") or {}) if key not in spec}
        patch = {"metadata": {"resourceVersion": version}, "spec": {**removed, **spec}}
        self.api.patch_namespaced_custom_object(
            *_LEASES[:2], self.namespace, _LEASES[2], self.name, patch
        )

    def acquire(self, stop: threading.Event) -> bool:
        """Block until we lead (True) or `stop` is set (False)."""
        log.info("waiting to lead (Lease %s/%s) as %s", self.namespace, self.name, self.identity)
        while not stop.is_set():
            try:
                if self.try_once():
                    return True
            except Exception as exc:  # noqa: BLE001 - the API may be briefly unreachable
                log.warning("leader election attempt failed: %s", _brief(exc))
            stop.wait(self.timing.retry)
        return False

    def keep(
        self,
        lost: threading.Event,
        stop: threading.Event,
        on_lost: Callable[[], object] | None = None,
    ) -> None:
        """Renew until `stop`; set `lost` (and call `on_lost`) when renewal failed for
        renew_deadline."""
        last_ok = self.clock()
        while not stop.wait(self.timing.retry):
            try:
                if self.try_once():
                    last_ok = self.clock()
                    continue
            except Exception as exc:  # noqa: BLE001
                log.warning("renewing the Lease failed: %s", _brief(exc))
            if (self.clock() - last_ok).total_seconds() >= self.timing.renew_deadline:
                log.error("lost the leadership (Lease %s/%s)", self.namespace, self.name)
                lost.set()
                if on_lost is not None:
                    on_lost()
                return

    def release(self) -> None:
        """Give the Lease up (only if we still hold it), so a standby takes over at once."""
        try:
            lease = self._read()
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            spec = dict(lease["spec"])
            spec.pop("holderIdentity", None)
            spec["leaseDurationSeconds"] = 1
            self._patch(lease, spec)
            log.info("released the Lease %s/%s", self.namespace, self.name)
        except Exception as exc:  # noqa: BLE001 - it expires by itself anyway
            log.warning("releasing the Lease failed: %s", _brief(exc))


def _brief(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    return f"{status} {getattr(exc, 'reason', '')}".strip() if status else str(exc)[:200]
