"""Read rank 0's progress endpoint. A worker that is down or slow is not an error."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

log = logging.getLogger("finetune_operator.progress")

# Pod IPs are never reached through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
MAX_BYTES = 1 << 20


def fetch_progress(url: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """GET the ProgressDocument JSON; None when unreachable or not JSON."""
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            body = response.read(MAX_BYTES)
        data = json.loads(body)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        log.debug("progress endpoint %s unavailable: %s", url, exc)
        return None
    return data if isinstance(data, dict) else None
