"""What went wrong talking to S3, in words: retryable or not, and a FetchError that says
what happened and what to do (every message redacted)."""

from __future__ import annotations

from finetune_runtime.errors import FetchError
from finetune_runtime.storage.redact import redact
from finetune_runtime.storage.s3 import is_s3_uri, parse_s3_uri

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


class TransferIntegrityError(Exception):
    """A downloaded file does not match the object's size or MD5: retry, never use it."""


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


def describe_error(exc: BaseException, *, action: str, uri: str, endpoint: str) -> FetchError:
    """Turn any boto/transfer failure into a FetchError that says what happened and what to do."""
    from botocore.exceptions import FlexibleChecksumError

    message = _transport_message(exc, action, uri, endpoint)
    if message is None:
        code, status = client_error_info(exc)
        if code is not None or status is not None:
            http = f"HTTP {status}" if status is not None else "no HTTP status"
            label = f"{code}, {http}" if code and code != str(status) else http
            hint = _service_hint(code, status, uri, endpoint)
            message = f"{action} {uri} failed ({label}): {hint}"
        elif isinstance(exc, TransferIntegrityError | FlexibleChecksumError):
            message = (
                f"{action} {uri} failed: the data arrived corrupted ({exc}); nothing was "
                "written; check for a proxy or network device altering traffic"
            )
        else:
            message = f"{action} {uri} failed: {type(exc).__name__}: {exc}"
    return FetchError(redact(message))


def _transport_message(exc: BaseException, action: str, uri: str, endpoint: str) -> str | None:
    """Failures before S3 answered: a broken connection, no credentials, no endpoint."""
    from botocore.exceptions import (
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )
    from s3transfer.exceptions import RetriesExceededError

    if isinstance(exc, RetriesExceededError) and exc.last_exception is not None:
        inner = exc.last_exception
        return (
            f"{action} {uri} failed: the connection broke repeatedly mid-transfer "
            f"({type(inner).__name__}) from {endpoint}; check the network or retry later"
        )
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return (
            f"{action} {uri}: no usable S3 credentials found; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (the operator injects them from the job's S3 Secret), "
            "use an instance/pod role, or pass --no-sign-request for a public bucket"
        )
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        return (
            f"{action} {uri}: cannot reach the S3 endpoint {endpoint} "
            f"({type(exc).__name__}); check --endpoint-url / AWS_ENDPOINT_URL, "
            "the region and network access"
        )
    return None


def _service_hint(code: str | None, status: int | None, uri: str, endpoint: str) -> str:
    """What to do about an error S3 answered with (code and HTTP status)."""
    loc = parse_s3_uri(uri) if is_s3_uri(uri) else None
    bucket = loc.bucket if loc else "?"
    if code == "NoSuchBucket":
        return (
            f"bucket {bucket!r} does not exist at {endpoint}; check the bucket name, "
            "the region and --endpoint-url / AWS_ENDPOINT_URL"
        )
    if code in ("NoSuchKey", "404") or status == 404:
        return (
            "no such object; check the key (a directory must end with '/') and that it was uploaded"
        )
    if code in _ACCESS_CODES or status == 403:
        return f"access denied; {CREDENTIALS_HINT}"
    if code == "PermanentRedirect" or status == 301:
        return f"bucket {bucket!r} is in another region; pass --region (or AWS_REGION)"
    if status is not None and status >= 500 or code in _RETRYABLE_CODES:
        return (
            f"the storage service at {endpoint} kept failing after retries; "
            "it may be overloaded or down, retry later"
        )
    return "the storage service rejected the request"
