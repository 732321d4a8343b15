"""Credentials never reach a message, a log line or a status: `redact` and its log filter.

Known values (the S3 and experiment-tracker secrets in the environment, and whatever
boto3's credential chain resolved) are replaced, and so are well-known shapes (AWS key
ids, presigned-URL signatures, `user:password@` in URLs). Stdlib only.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from typing import Any

from finetune_runtime.contract import (
    ENV_AWS_ACCESS_KEY_ID,
    ENV_AWS_SECRET_ACCESS_KEY,
    SECRET_ONLY_ENV,
)

SECRET_ENVS = (
    ENV_AWS_ACCESS_KEY_ID,
    ENV_AWS_SECRET_ACCESS_KEY,
    "AWS_SESSION_TOKEN",
    # experiment trackers' credentials (finetune_runtime.progress.tracking)
    *sorted(SECRET_ONLY_ENV),
)
_known_secrets: set[str] = set()
_PATTERNS = [
    (re.compile(r"\b(AKIA|ASIA|AIDA|AROA)[A-Z0-9]{12,}\b"), "[REDACTED-KEY-ID]"),
    (
        re.compile(r"(?i)(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s\"']+"),
        r"\1[REDACTED]",
    ),
    (re.compile(r"(?i)(Credential=|Signature=)[^,\s\"']+"), r"\1[REDACTED]"),
    (
        re.compile(r"(?i)(aws_secret_access_key|aws_session_token)(\s*[=:]\s*)\S+"),
        r"\1\2[REDACTED]",
    ),
    (re.compile(r"(://)[^/@\s]+:[^/@\s]+@"), r"\1[REDACTED]@"),
]


def remember_secrets(session: Any) -> None:
    """Add the environment's secrets and the credentials `session` resolved."""
    for name in SECRET_ENVS:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            _known_secrets.add(value)
    try:
        creds = session.get_credentials()
    except Exception:  # a broken profile surfaces later as a client error
        creds = None
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        for value in (frozen.access_key, frozen.secret_key, frozen.token):
            if value and len(value) >= 4:
                _known_secrets.add(value)


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """Remove credentials (known values and well-known shapes) from `text`."""
    secrets = set(_known_secrets)
    secrets.update(v for v in (os.environ.get(n) for n in SECRET_ENVS) if v and len(v) >= 4)
    secrets.update(v for v in extra if v and len(v) >= 4)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "[REDACTED]")
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Redacts every record a handler emits, third-party ones included: botocore's DEBUG
    log prints each request's Authorization header (Credential=<access key id>/...)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
