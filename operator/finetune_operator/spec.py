"""The FineTuneJob spec: a pydantic model (camelCase on the wire) and its validation.

`validate_job` turns a raw FineTuneJob body into a `ValidJob` (spec + parsed training
config) or raises `SpecError`, whose message names every offending spec field (and,
for the training config, the config field and line) and says what to do. The CRD's
OpenAPI schema for everything but `spec.config` is generated from `FineTuneJobSpec`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from finetune_operator import constants as c
from finetune_operator.cel_rules import SPEC_RULES, s3_rules
from finetune_operator.pod_template import PodTemplate
from finetune_operator.redact import has_userinfo, redact
from finetune_operator.scheduling import KUEUE_QUEUE_LABEL, SchedulingPolicy, kueue_queue

_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[numkMGTPE]|[KMGTPE]i)?$")
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$")

DEFAULT_STORAGE_SIZE = "10Gi"
# torchrun's shutdown timeout (30 s) plus time to write one checkpoint.
DEFAULT_GRACE_SECONDS = 120
DEFAULT_STARTUP_TIMEOUT_SECONDS = 600


def _quantity(value: Any) -> str:
    if isinstance(value, bool):
        raise ValueError("must be a quantity such as 4, 500m, 16Gi")
    if isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str) or not _QUANTITY.match(value.strip()):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 4, 500m, 16Gi)")
    return value.strip()


Quantity = Annotated[
    str,
    BeforeValidator(_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "pattern": _QUANTITY.pattern,
        }
    ),
]


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", populate_by_name=False, alias_generator=to_camel, frozen=True
    )


class SecretRef(_Model):
    """A Secret in the job's namespace holding S3 credentials."""

    name: str = Field(min_length=1)
    access_key_id_key: str = Field("AWS_ACCESS_KEY_ID", min_length=1)
    secret_access_key_key: str = Field("AWS_SECRET_ACCESS_KEY", min_length=1)


class S3Source(_Model):
    """An S3 location fetched into the pod by an init container before training."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": s3_rules(_S3_URI)})

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
        if not _S3_URI.match(value):
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


class Storage(_Model):
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


class Resources(_Model):
    """Container resources of each worker. `gpus` sets nvidia.com/gpu requests and limits."""

    requests: dict[str, Quantity] = Field(default_factory=dict)
    limits: dict[str, Quantity] = Field(default_factory=dict)
    gpus: int | bool | None = Field(
        None,
        description="GPUs per worker pod: true = nprocPerNode, a number = that many "
        "(nprocPerNode then defaults to it), false/0 = none.",
    )

    @field_validator("gpus")
    @classmethod
    def _non_negative(cls, value: int | bool | None) -> int | bool | None:
        if not isinstance(value, bool) and isinstance(value, int) and value < 0:
            raise ValueError("must be >= 0")
        return value


class EnvVar(_Model):
    """An extra environment variable for the trainer container (Kubernetes EnvVar form)."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        frozen=True,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.value) && has(self.valueFrom))",
                    "message": "set value or valueFrom, not both",
                }
            ]
        },
    )

    name: str = Field(
        max_length=256,
        json_schema_extra={
            "pattern": _ENV_NAME.pattern,
            "x-kubernetes-validations": [
                {
                    "rule": "!(self in ["
                    + ", ".join(f"'{n}'" for n in sorted(c.RESERVED_ENV))
                    + "])",
                    "message": "this environment variable is set by the operator",
                }
            ],
        },
    )
    value: str | None = None
    valueFrom: dict[str, Any] | None = None  # noqa: N815 - the Kubernetes field name

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _ENV_NAME.match(value):
            raise ValueError(f"{value!r} is not a valid environment variable name")
        if value in c.RESERVED_ENV:
            raise ValueError(f"{value} is set by the operator and cannot be overridden")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        if self.value is not None and self.valueFrom is not None:
            raise ValueError(f"{self.name}: set value or valueFrom, not both")
        if self.name in c.SECRET_ONLY_ENV and "secretKeyRef" not in (self.valueFrom or {}):
            raise ValueError(
                f"{self.name} is a credential: give it as valueFrom.secretKeyRef (a Secret "
                "reference), never as a literal value"
            )
        return self


class SecretKeyRef(_Model):
    """One key of a Secret in the job's namespace."""

    name: str = Field(min_length=1)
    key: str = Field(min_length=1)


class LocalObjectReference(_Model):
    name: str = Field(min_length=1)


class RunPolicy(_Model):
    """Restart, deadline and cleanup rules, as in Kubeflow's RunPolicy."""

    backoff_limit: int = Field(3, ge=0, description="Gang restarts before the job fails.")
    active_deadline_seconds: int | None = Field(None, ge=1)
    ttl_seconds_after_finished: int | None = Field(None, ge=0)
    suspend: bool = False
    clean_pod_policy: Literal["None", "Running", "All"] = "Running"
    restart_policy: Literal["OnFailure", "Never", "ExitCode"] = Field(
        "OnFailure",
        description="When a worker fails: OnFailure restarts the gang (up to backoffLimit) "
        "unless the runtime reported a user error (bad config or dataset); Never fails the "
        "job; ExitCode fails it on exit codes 1-127 and restarts on 128+ (signals, e.g. "
        "preemption).",
    )
    startup_timeout_seconds: int = Field(
        DEFAULT_STARTUP_TIMEOUT_SECONDS,
        ge=1,
        description="Fail the job when its workers cannot start for this long: pod creation "
        "refused, Unschedulable, image pull errors, CreateContainerConfigError. Waiting in a "
        "Kueue queue or for a gang scheduler does not count.",
    )
    scheduling_policy: SchedulingPolicy | None = Field(
        None, description="Gang admission: PodGroup scheduler, minAvailable, priority."
    )
    termination_grace_period_seconds: int = Field(
        DEFAULT_GRACE_SECONDS,
        ge=0,
        description="Workers' terminationGracePeriodSeconds: on SIGTERM (preemption, suspend, "
        "a replaced gang) the trainers finish their step and checkpoint; torchrun alone "
        "waits up to 30 s for them, so leave room for one checkpoint on top.",
    )


class ServeSpec(_Model):
    """Inference replicas of the trained model (`finetune serve`), created once the job
    succeeded: a Deployment behind a Service, rolled when a retrain writes new outputs."""

    replicas: int = Field(1, ge=0, le=100, description="`finetune serve` pods.")
    port: int = Field(8000, ge=1024, le=65535, description="Container and Service port.")
    resources: Resources = Field(default_factory=Resources)
    image: str | None = Field(None, description="Default: the job's image.")
    served_model_name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$",
        description="The `model` name clients send (default: the job's name).",
    )
    max_batch: int | None = Field(None, ge=1, le=1024, description="Sequences decoded together.")
    max_queue: int | None = Field(None, ge=1, description="Waiting sequences before 429.")
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    api_key_secret_ref: SecretKeyRef | None = Field(
        None, description="Require this bearer token (a Secret key) on /v1/*."
    )


class FineTuneJobSpec(_Model):
    """What a FineTuneJob asks for."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": SPEC_RULES})

    config: dict[str, Any] | str = Field(
        description="The training config (canonical or axolotl-style), inline or as YAML text."
    )
    image: str | None = Field(None, description="Runtime image; default: the operator's.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)
    nodes: int = Field(1, ge=1, le=512, description="Gang size: worker pods, one per node.")
    nproc_per_node: int | None = Field(
        None, ge=1, le=64, description="Training processes per pod (default 1, or resources.gpus)."
    )
    resources: Resources = Field(default_factory=Resources)
    storage: Storage = Field(default_factory=Storage)
    dataset: S3Source | None = None
    model: S3Source | None = None
    output: S3Output | None = Field(
        None, description="Upload the trained weights here once training succeeded."
    )
    env: list[EnvVar] = Field(default_factory=list, max_length=128)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = None
    scheduler_name: str | None = None
    service_account_name: str | None = None
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    pod_template: PodTemplate | None = Field(
        None, description="Worker pod customisation merged onto what the operator builds."
    )
    serve: ServeSpec | None = Field(
        None, description="Serve the trained model (OpenAI API) once the job succeeded."
    )

    @field_validator("env")
    @classmethod
    def _unique_env(cls, value: list[EnvVar]) -> list[EnvVar]:
        seen: set[str] = set()
        for item in value:
            if item.name in seen:
                raise ValueError(f"{item.name} is listed twice")
            seen.add(item.name)
        return value

    @model_validator(mode="after")
    def _scheduling(self) -> FineTuneJobSpec:
        policy = self.run_policy.scheduling_policy
        if policy is None:
            return self
        if policy.min_available is not None and policy.min_available > self.nodes:
            raise ValueError(
                f"runPolicy.schedulingPolicy.minAvailable ({policy.min_available}) exceeds "
                f"nodes ({self.nodes}): a gang cannot need more workers than it has"
            )
        if policy.priority_class is not None and self.priority_class_name is not None:
            raise ValueError(
                "set priorityClassName or runPolicy.schedulingPolicy.priorityClass, not both"
            )
        if policy.queue is not None and policy.scheduler != "volcano":
            raise ValueError(
                "runPolicy.schedulingPolicy.queue is a Volcano queue: it needs scheduler: volcano"
            )
        return self

    @property
    def priority_class(self) -> str | None:
        """The workers' PriorityClass, from either field."""
        policy = self.run_policy.scheduling_policy
        return self.priority_class_name or (policy.priority_class if policy else None)

    @model_validator(mode="after")
    def _gpus_match_procs(self) -> FineTuneJobSpec:
        gpus = self.resources.gpus
        counted = isinstance(gpus, int) and not isinstance(gpus, bool) and gpus > 0
        if counted and self.nproc_per_node is not None and self.nproc_per_node != gpus:
            raise ValueError(
                f"resources.gpus ({gpus}) and nprocPerNode ({self.nproc_per_node}) differ: "
                "torchrun starts one process per GPU, so set them equal (or drop one)"
            )
        if gpus not in (None, False, 0) and (
            c.GPU_RESOURCE in self.resources.limits or c.GPU_RESOURCE in self.resources.requests
        ):
            raise ValueError(
                f"set GPUs either with resources.gpus or with {c.GPU_RESOURCE} in "
                "requests/limits, not both"
            )
        modes = self.storage.access_modes
        if self.nodes > 1 and modes is not None and "ReadWriteMany" not in modes:
            raise ValueError(
                f"storage.accessModes {modes}: a gang of {self.nodes} nodes shares the "
                "checkpoint volume; include ReadWriteMany (or use storage.existingClaim)"
            )
        return self

    @property
    def procs_per_node(self) -> int:
        if self.nproc_per_node is not None:
            return self.nproc_per_node
        gpus = self.resources.gpus
        if isinstance(gpus, int) and not isinstance(gpus, bool) and gpus > 0:
            return gpus
        return 1

    @property
    def gpus_per_node(self) -> int:
        """GPUs each worker requests through resources.gpus (0 when not used)."""
        gpus = self.resources.gpus
        if gpus is True:
            return self.procs_per_node
        if gpus is None or gpus is False:
            return 0
        return int(gpus)


@dataclass(frozen=True)
class SpecIssue:
    field: str
    message: str

    def render(self) -> str:
        return f"{self.field}: {self.message}"


class SpecError(Exception):
    """The FineTuneJob cannot run as written. `issues` names every offending field."""

    def __init__(self, issues: list[SpecIssue], text: str | None = None) -> None:
        self.issues = issues
        if text is not None:
            pass  # already located (the runtime's ConfigError names file:line and field)
        elif len(issues) == 1:
            text = issues[0].render()
        else:
            text = f"{len(issues)} problems in the FineTuneJob:\n" + "\n".join(
                f"  - {issue.render()}" for issue in issues
            )
        super().__init__(text + "\nFix the FineTuneJob and apply it again.")


def _loc(loc: tuple[str | int, ...]) -> str:
    out = "spec"
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "literal[", "list[", "dict[", "str", "int", "bool")):
            continue  # pydantic's union-member tags say nothing to a user
        else:
            out += f".{part}"
    return out


def _spec_issues(exc: ValidationError) -> list[SpecIssue]:
    issues = []
    for err in exc.errors(include_url=False):
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; fields are camelCase)"
        elif err["type"] == "missing":
            message = "is required"
        elif "env" in err["loc"]:
            pass  # never echo environment values: they may be credentials
        elif "input" in err and err["type"] not in ("value_error", "assertion_error"):
            shown = redact(repr(err["input"]))  # a URL may carry user:password@
            message += f" (got {shown[:60]})"
        issues.append(SpecIssue(_loc(err["loc"]), message))
    return issues


@dataclass(frozen=True)
class ValidJob:
    """A FineTuneJob that passed validation: its spec and its training config."""

    spec: FineTuneJobSpec
    config: Any  # finetune_runtime.config.FineTuneConfig


def parse_spec(raw: Any) -> FineTuneJobSpec:
    """Validate `spec` only (not the training config inside it)."""
    if not isinstance(raw, dict):
        raise SpecError([SpecIssue("spec", "is required: a mapping with at least `config`")])
    try:
        return FineTuneJobSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(_spec_issues(exc)) from None


def check_name(name: str, nodes: int) -> list[SpecIssue]:
    """The job name becomes a Service name and part of pod hostnames (DNS labels)."""
    hostname = f"{name}-worker-{max(nodes - 1, 0)}"
    if not _DNS_LABEL.match(name):
        return [
            SpecIssue(
                "metadata.name",
                f"{name!r} must be a DNS label (lowercase letters, digits, '-', starting with "
                "a letter): it names the job's headless Service",
            )
        ]
    if len(hostname) > c.MAX_LABEL:
        limit = c.MAX_LABEL - (len(hostname) - len(name))
        return [
            SpecIssue(
                "metadata.name",
                f"{name!r} is too long: worker hostnames like {hostname!r} must fit in "
                f"{c.MAX_LABEL} characters; use at most {limit} characters",
            )
        ]
    return []


def check_admission(meta: dict[str, Any], spec: FineTuneJobSpec) -> list[SpecIssue]:
    """Kueue (the queue-name label) and a PodGroup scheduler would both gate the gang."""
    policy = spec.run_policy.scheduling_policy
    queue = kueue_queue(meta.get("labels"))
    if queue is not None and policy is not None and policy.scheduler != "default":
        return [
            SpecIssue(
                "spec.runPolicy.schedulingPolicy.scheduler",
                f"the job is in Kueue queue {queue!r} (label {KUEUE_QUEUE_LABEL}), which admits "
                f"the gang itself: drop scheduler: {policy.scheduler} or the label",
            )
        ]
    return []


def validate_job(body: dict[str, Any]) -> ValidJob:
    """Validate a whole FineTuneJob body: name, spec and training config."""
    from finetune_runtime.config import parse_config, unmergeable_reason
    from finetune_runtime.errors import ConfigError

    meta = body.get("metadata") or {}
    name, namespace = meta.get("name", ""), meta.get("namespace", "")
    spec = parse_spec(body.get("spec"))
    issues = check_name(name, spec.nodes) + check_admission(meta, spec)
    if issues:
        raise SpecError(issues)
    source = f"FineTuneJob {namespace}/{name} spec.config"
    try:
        config = parse_config(spec.config, source=source)
    except ConfigError as exc:
        issues = [
            SpecIssue(f"spec.config.{i.field}" if i.field else "spec.config", i.message)
            for i in exc.issues
        ]
        raise SpecError(issues, text=str(exc)) from None
    if spec.output is not None and spec.output.merge and config.adapter == "none":
        raise SpecError(
            [
                SpecIssue(
                    "spec.output.merge",
                    "a full fine-tune (spec.config adapter: none) has no adapter to merge; its "
                    "model is uploaded as it is: drop merge",
                )
            ]
        )
    reason = unmergeable_reason(config.adapter)
    if spec.output is not None and spec.output.merge and reason is not None:
        raise SpecError([SpecIssue("spec.output.merge", f"{reason}; drop merge")])
    return ValidJob(spec=spec, config=config)
