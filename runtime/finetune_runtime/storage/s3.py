"""S3 plumbing shared by fetch and upload: URIs, listed objects, options and clients.

Credentials come only from boto3's standard chain (env, profile, web identity,
instance role); the operator injects AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from
a Secret. They never appear in anything this module produces: every message goes
through `storage.redact`; failures are explained by `storage.s3_errors`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from finetune_runtime.contract import ENV_S3_ADDRESSING_STYLE
from finetune_runtime.errors import FetchError
from finetune_runtime.storage.redact import redact, remember_secrets

AddressingStyle = Literal["auto", "path", "virtual"]
ADDRESSING_STYLES: tuple[str, ...] = ("auto", "path", "virtual")
ADDRESSING_ENV = ENV_S3_ADDRESSING_STYLE
ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")

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


def options_with(
    options: S3Options | None, endpoint_url: str | None, region: str | None
) -> S3Options:
    """`options` (or the defaults) with an explicit endpoint and region laid over them."""
    options = options or S3Options()
    if endpoint_url:
        options = dataclasses.replace(options, endpoint_url=endpoint_url)
    if region:
        options = dataclasses.replace(options, region=region)
    return options


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
    remember_secrets(session)
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
