"""Every change to a namespace's pods, in the apiserver's order (a real watch, gapless).

A sampled `list` can miss a pod that lived between two samples; a watch started from a
list's resourceVersion cannot: etcd delivers every ADDED/MODIFIED/DELETED after it, in
order. Tests replay `events` to check what existed together (e.g. two gangs' pods).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from kubeharness.api import Api


@dataclass(frozen=True)
class PodEvent:
    type: str  # ADDED, MODIFIED, DELETED
    name: str
    uid: str
    labels: dict[str, str]
    deleting: bool  # deletionTimestamp set
    phase: str
    ip: str | None


class PodWatch:
    """Records `PodEvent`s of one namespace from `start()` until `stop()`."""

    def __init__(self, api: Api, namespace: str) -> None:
        self.api = api
        self.path = f"api/v1/namespaces/{namespace}/pods"
        self.events: list[PodEvent] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> PodWatch:
        listing = self.api.get(self.path) or {}
        for pod in listing.get("items") or []:
            self.events.append(self._event("ADDED", pod))
        version = str(listing["metadata"]["resourceVersion"])
        self._thread = threading.Thread(target=self._run, args=(version,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[PodEvent]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)
        if self.error is not None:
            raise AssertionError(f"the pod watch broke: {self.error}")
        return list(self.events)

    @staticmethod
    def _event(kind: str, pod: dict[str, Any]) -> PodEvent:
        meta, status = pod["metadata"], pod.get("status") or {}
        return PodEvent(
            kind,
            meta["name"],
            meta["uid"],
            dict(meta.get("labels") or {}),
            bool(meta.get("deletionTimestamp")),
            str(status.get("phase") or "Pending"),
            status.get("podIP"),
        )

    def _run(self, version: str) -> None:
        """Short watches, each resumed from the last resourceVersion seen (no gap)."""
        try:
            while not self._stop.is_set():
                params = {"watch": "1", "resourceVersion": version, "timeoutSeconds": "1"}
                url = f"{self.api.url}/{self.path}"
                with self.api.http.get(url, params=params, stream=True, timeout=15) as response:
                    response.raise_for_status()
                    for line in response.iter_lines():
                        if not line:
                            continue
                        change = json.loads(line)
                        if change["type"] == "ERROR":
                            raise RuntimeError(change["object"].get("message"))
                        pod = change["object"]
                        version = pod["metadata"]["resourceVersion"]
                        if change["type"] in ("ADDED", "MODIFIED", "DELETED"):
                            self.events.append(self._event(change["type"], pod))
        except Exception as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc
