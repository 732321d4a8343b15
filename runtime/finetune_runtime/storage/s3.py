"""S3 plumbing shared by fetch and upload: URIs, clients, error messages, redaction.

Credentials come only from boto3's standard chain (env, profile, web identity,
instance role); the operator injects AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from
a Secret. They never appear in anything this module produces: every message goes
through `redact()`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from finetune_runtime.errors import FetchError

AddressingStyle = Literal["auto", "path", "virtual"]
ADDRESSING_STYLES: tuple[str, ...] = ("auto", "path", "virtual")
ADDRESSING_ENV = "FINETUNE_S3_ADDRESSING_STYLE"
ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
SECRET_ENVS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    # experiment trackers' credentials (finetune_runtime.progress.tracking)
    "WANDB_API_KEY",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
)

_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str = ""

    @property
    def is_prefix(self) -> bool:
        """True for `s3://bucket`, `s3://bucket/` and `s3://bucket/dir/`."""
        return self.key == "" or self.key.endswith("/")

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def as_prefix(self) -> S3Location:
        return self if self.is_prefix else S3Location(self.bucket, self.key + "/")


def is_s3_uri(value: object) -> bool:
    return isinstance(value, str) and value.startswith("s3://")


def parse_s3_uri(uri: str) -> S3Location:
    """`s3://bucket/key` → S3Location; anything else is a FetchError saying what is expected."""
    if not is_s3_uri(uri):
        raise FetchError(
            f"{uri!r} is not an S3 URI: expected s3://BUCKET/KEY or s3://BUCKET/PREFIX/"
        )
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not _BUCKET_RE.match(bucket):
        raise FetchError(
            f"{uri!r}: {bucket!r} is not a valid bucket name "
            "(3-255 letters, digits, '.', '-', '_'; expected s3://BUCKET/KEY)"
        )
    return S3Location(bucket, key)


@dataclass(frozen=True)
class RemoteObject:
    key: str
    size: int
    etag: str  # as S3 sends it, quoted
    last_modified: str | None = None

    @property
    def etag_value(self) -> str:
        return self.etag.strip('"')

    @property
    def md5(self) -> str | None:
        """The content MD5 when the ETag is one (single-part, not SSE-KMS/SSE-C)."""
        value = self.etag_value.lower()
        if len(value) == 32 and all(c in "0123456789abcdef" for c in value):
            return value
        return None

    @classmethod
    def from_head(cls, key: str, head: dict[str, Any]) -> RemoteObject:
        return cls(key, int(head["ContentLength"]), head["ETag"], _iso(head.get("LastModified")))

    @classmethod
    def from_listing(cls, item: dict[str, Any]) -> RemoteObject:
        return cls(item["Key"], int(item["Size"]), item["ETag"], _iso(item.get("LastModified")))


def _iso(value: object) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None


@dataclass(frozen=True)
class S3Options:
    """How to reach the object store. None means "boto3's default / the environment"."""

    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: AddressingStyle | None = None
    anonymous: bool = False
    max_attempts: int | None = None
    retry_mode: str | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 60.0

    def resolved_endpoint(self) -> str | None:
        if self.endpoint_url:
            return self.endpoint_url
        for name in ENDPOINT_ENVS:
            if os.environ.get(name):
                return os.environ[name]
        return None

    def resolved_addressing_style(self) -> AddressingStyle:
        style = self.addressing_style or os.environ.get(ADDRESSING_ENV) or None
        if style is None:
            # MinIO/Ceph behind a custom endpoint rarely have wildcard DNS for buckets.
            return "path" if self.resolved_endpoint() else "auto"
        if style not in ADDRESSING_STYLES:
            raise FetchError(
                f"S3 addressing style {style!r} is not one of {', '.join(ADDRESSING_STYLES)} "
                f"(from --addressing-style or ${ADDRESSING_ENV})"
            )
        return style  # type: ignore[return-value]


def make_client(options: S3Options) -> Any:
    """A boto3 S3 client with retries (standard mode by default) and the endpoint override."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    retries: dict[str, Any] = {
        "mode": options.retry_mode or os.environ.get("AWS_RETRY_MODE") or "standard",
        # Total attempts per request, initial one included (botocore's "max_attempts" excludes it).
        "total_max_attempts": options.max_attempts or int(os.environ.get("AWS_MAX_ATTEMPTS") or 5),
    }
    config = Config(
        retries=retries,  # type: ignore[arg-type]
        s3={"addressing_style": options.resolved_addressing_style()},
        connect_timeout=options.connect_timeout,
        read_timeout=options.read_timeout,
        max_pool_connections=32,
        signature_version=UNSIGNED if options.anonymous else None,
    )
    session = boto3.session.Session()
    _remember_secrets(session)
    try:
        return session.client(
            "s3",
            endpoint_url=options.resolved_endpoint(),
            region_name=options.region,
            config=config,
        )
    except ValueError as exc:  # e.g. a malformed endpoint URL
        raise FetchError(redact(f"cannot create an S3 client: {exc}")) from None


def endpoint_of(client: Any) -> str:
    return redact(str(client.meta.endpoint_url))


# -- redaction --------------------------------------------------------------------

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


def _remember_secrets(session: Any) -> None:
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


# -- errors -------------------------------------------------------------------------

_RETRYABLE_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "PreconditionFailed",  # the object changed mid-download: list again, then retry
}
_ACCESS_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
    "403",
}
CREDENTIALS_HINT = (
    "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, injected by the "
    "operator from the job's S3 credentials Secret) and that they allow s3:ListBucket "
    "and s3:GetObject (s3:PutObject for uploads) on this bucket"
)


def client_error_info(exc: BaseException) -> tuple[str | None, int | None]:
    """(error code, HTTP status) of a botocore ClientError, else (None, None)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None, None
    code = response.get("Error", {}).get("Code")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return (str(code) if code is not None else None), status


def is_retryable(exc: BaseException) -> bool:
    """Worth another attempt: server-side, throttling, network or mid-body failures."""
    from botocore.exceptions import (
        ConnectionError as BotoConnectionError,
    )
    from botocore.exceptions import (
        FlexibleChecksumError,
        IncompleteReadError,
        ResponseStreamingError,
    )
    from s3transfer.exceptions import RetriesExceededError, S3DownloadFailedError

    if isinstance(
        exc,
        S3DownloadFailedError
        | RetriesExceededError
        | TransferIntegrityError
        | FlexibleChecksumError,
    ):
        return True
    if isinstance(exc, BotoConnectionError | IncompleteReadError | ResponseStreamingError):
        return True
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError | PermissionError):
        return isinstance(exc, ConnectionError | TimeoutError)
    code, status = client_error_info(exc)
    if code is None and status is None:
        return False
    return code in _RETRYABLE_CODES or (status is not None and status >= 500)


class TransferIntegrityError(Exception):
    """A downloaded file does not match the object's size or MD5: retry, never use it."""


def describe_error(exc: BaseException, *, action: str, uri: str, endpoint: str) -> FetchError:
    """Turn any boto/transfer failure into a FetchError that says what happened and what to do."""
    from botocore.exceptions import (
        ConnectTimeoutError,
        EndpointConnectionError,
        FlexibleChecksumError,
        NoCredentialsError,
        PartialCredentialsError,
    )
    from s3transfer.exceptions import RetriesExceededError

    if isinstance(exc, RetriesExceededError) and exc.last_exception is not None:
        inner = exc.last_exception
        return FetchError(
            redact(
                f"{action} {uri} failed: the connection broke repeatedly mid-transfer "
                f"({type(inner).__name__}) from {endpoint}; check the network or retry later"
            )
        )
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        msg = (
            f"{action} {uri}: no usable S3 credentials found; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (the operator injects them from the job's S3 Secret), "
            "use an instance/pod role, or pass --no-sign-request for a public bucket"
        )
        return FetchError(redact(msg))
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        return FetchError(
            redact(
                f"{action} {uri}: cannot reach the S3 endpoint {endpoint} "
                f"({type(exc).__name__}); check --endpoint-url / AWS_ENDPOINT_URL, "
                "the region and network access"
            )
        )
    code, status = client_error_info(exc)
    if code is not None or status is not None:
        http = f"HTTP {status}" if status is not None else "no HTTP status"
        label = f"{code}, {http}" if code and code != str(status) else http
        loc = parse_s3_uri(uri) if is_s3_uri(uri) else None
        bucket = loc.bucket if loc else "?"
        if code == "NoSuchBucket":
            hint = (
                f"bucket {bucket!r} does not exist at {endpoint}; check the bucket name, "
                "the region and --endpoint-url / AWS_ENDPOINT_URL"
            )
        elif code in ("NoSuchKey", "404") or status == 404:
            hint = (
                "no such object; check the key (a directory must end with '/') "
                "and that it was uploaded"
            )
        elif code in _ACCESS_CODES or status == 403:
            hint = f"access denied; {CREDENTIALS_HINT}"
        elif code == "PermanentRedirect" or status == 301:
            hint = f"bucket {bucket!r} is in another region; pass --region (or AWS_REGION)"
        elif status is not None and status >= 500 or code in _RETRYABLE_CODES:
            hint = (
                f"the storage service at {endpoint} kept failing after retries; "
                "it may be overloaded or down, retry later"
            )
        else:
            hint = "the storage service rejected the request"
        return FetchError(redact(f"{action} {uri} failed ({label}): {hint}"))
    if isinstance(exc, TransferIntegrityError | FlexibleChecksumError):
        return FetchError(
            redact(
                f"{action} {uri} failed: the data arrived corrupted ({exc}); nothing was "
                "written; check for a proxy or network device altering traffic"
            )
        )
    return FetchError(redact(f"{action} {uri} failed: {type(exc).__name__}: {exc}"))
