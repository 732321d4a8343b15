"""Thread-safe HTTPS access to the test apiserver as one identity (one session per thread)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import requests

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"


class ApiError(requests.HTTPError):
    """A refused request, with the apiserver's status code and message."""

    def __init__(self, response: requests.Response) -> None:
        self.status = response.status_code
        try:
            self.body: dict[str, Any] = response.json()
        except ValueError:
            self.body = {"message": response.text[:300]}
        super().__init__(
            f"{response.request.method} {response.url}: {self.status} "
            f"{self.body.get('message', '')}",
            response=response,
        )


class Api:
    """GET/POST/PATCH/DELETE on paths relative to the apiserver's URL."""

    def __init__(self, url: str, make_session: Callable[[], requests.Session]) -> None:
        self.url = url
        self._make_session = make_session
        self._local = threading.local()

    @property
    def http(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._make_session()
            self._local.session = session
        return session

    @staticmethod
    def _check(response: requests.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            raise ApiError(response)
        return response.json() if response.content else {}

    def get(self, path: str, **params: Any) -> dict[str, Any] | None:
        response = self.http.get(f"{self.url}/{path}", params=params or None, timeout=15)
        if response.status_code == 404:
            return None
        return self._check(response)

    def items(self, path: str, **params: Any) -> list[dict[str, Any]]:
        return list((self.get(path, **params) or {}).get("items") or [])

    def post(self, path: str, body: dict[str, Any], **params: Any) -> dict[str, Any]:
        return self._check(
            self.http.post(f"{self.url}/{path}", json=body, params=params or None, timeout=15)
        )

    def put(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._check(self.http.put(f"{self.url}/{path}", json=body, timeout=15))

    def patch(
        self, path: str, body: dict[str, Any] | list[Any], content_type: str = MERGE
    ) -> dict[str, Any] | None:
        """Patch; None when the object is gone."""
        response = self.http.patch(
            f"{self.url}/{path}",
            data=json.dumps(body),
            headers={"Content-Type": content_type},
            timeout=15,
        )
        if response.status_code == 404:
            return None
        return self._check(response)

    def delete(self, path: str, body: dict[str, Any] | None = None) -> bool:
        """Delete; False when it was already gone."""
        response = self.http.delete(f"{self.url}/{path}", json=body, timeout=15)
        if response.status_code == 404:
            return False
        self._check(response)
        return True
