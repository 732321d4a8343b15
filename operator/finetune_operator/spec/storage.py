"""Where data comes from and goes: S3 sources and outputs, the checkpoint volume."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from finetune_operator.cel_rules import s3_rules
from finetune_operator.redact import has_userinfo, redact
from finetune_operator.spec.base import DEFAULT_STORAGE_SIZE, S3_URI, Quantity, SpecModel


class SecretRef(SpecModel):
    """A Secret in the job's namespace holding S3 credentials."""

    name: str = Field(min_length=1)
    access_key_id_key: str = Field("AWS_ACCESS_KEY_ID", min_length=1)
    secret_access_key_key: str = Field("AWS_SECRET_ACCESS_KEY", min_length=1)


class S3Source(SpecModel):
    """An S3 location fetched into the pod by an init container before training."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": s3_rules(S3_URI)})

    uri: str = Field(
        description="s3://bucket/prefix (or s3://bucket/key for one object).",
        max_length=2048,
        # The format is checked by a rule on the object, not a `pattern` here: the
        # apiserver quotes a refused string value back, credentials and all.
    )
    endpoint: str | None = Field(
        None,
        description="S3 endpoint URL for non-AWS stores (no credentials in it).",
        max_length=2048,
    )
    region: str | None = None
    secret_ref: SecretRef | None = None

    @field_validator("uri")
    @classmethod
    def _s3(cls, value: str) -> str:
        value = value.strip()
        if has_userinfo(value):
            raise ValueError("must not carry credentials (user:password@): use secretRef")
        if not S3_URI.match(value):
            raise ValueError(f"{redact(value)[:120]!r} is not an s3://bucket/prefix URI")
        return value.rstrip("/") if value.count("/") > 3 else value

    @field_validator("endpoint")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and has_userinfo(value):
            raise ValueError("must not carry credentials (user:password@): use secretRef")
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{redact(value)[:120]!r} must be an http:// or https:// URL")
        return value


class S3Output(S3Source):
    """Where rank 0 uploads the finished weights: `<uri>/adapter/` (a full fine-tune:
    `<uri>/model/`) and, with `merge`, the merged model to `<uri>/merged/`."""

    merge: bool = Field(
        False, description="Also merge the adapter into the base model and upload it."
    )


class Storage(SpecModel):
    """The checkpoint volume, mounted at /checkpoints in every worker."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.existingClaim) || (!has(self.size) && "
                    "!has(self.storageClassName) && !has(self.accessModes))",
                    "message": "existingClaim uses a PVC you made: drop size, storageClassName "
                    "and accessModes (they only apply to the PVC the operator creates)",
                }
            ]
        }
    )

    existing_claim: str | None = Field(
        None, min_length=1, description="Use this PVC instead of creating one."
    )
    size: Quantity | None = Field(None, description=f"Default {DEFAULT_STORAGE_SIZE}.")
    storage_class_name: str | None = None
    access_modes: (
        list[Literal["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany", "ReadWriteOncePod"]] | None
    ) = Field(
        None,
        max_length=4,
        description="Default ReadWriteOnce for one node, ReadWriteMany for a gang.",
    )

    @model_validator(mode="after")
    def _exclusive(self) -> Storage:
        if self.existing_claim is not None:
            given = [
                name
                for name, value in (
                    ("size", self.size),
                    ("storageClassName", self.storage_class_name),
                    ("accessModes", self.access_modes),
                )
                if value is not None
            ]
            if given:
                raise ValueError(
                    f"existingClaim uses a PVC you made: drop {', '.join(given)} "
                    "(they only apply to the PVC the operator creates)"
                )
        return self
