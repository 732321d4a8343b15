"""Keep credentials out of everything the operator writes (status, events, logs).

A user may paste a secret into any field (`https://user:pass@host`, an access key in an
env value); a failed pod's log may print one. Text the operator copies into a condition,
an event or its own log passes through `redact` first.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@host -> scheme://***@host
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/\s@'\"]+@")
# AWS access key ids (AKIA…, ASIA…) and `key=value` pairs whose key says secret.
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")
_SECRET_PAIR = re.compile(
    r"(?P<key>\b[\w.-]*(?:secret|password|passwd|token|credential|api[_-]?key)[\w.-]*"
    r"\s*[=:]\s*)(?P<quote>['\"]?)[^\s'\",;]+",
    re.IGNORECASE,
)


def has_userinfo(url: str) -> bool:
    """True when a URL carries `user[:password]@` before its host."""
    return bool(_USERINFO.search(url))


def redact(text: str) -> str:
    """`text` with URL userinfo, AWS key ids and `secret=value` pairs masked."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _AWS_KEY_ID.sub(MASK, text)
    return _SECRET_PAIR.sub(lambda m: f"{m['key']}{m['quote']}{MASK}", text)
