"""`spec.podTemplate`: what a platform team may add to the worker pods, and the merge.

Allowed: labels/annotations, runtimeClassName, extra volumes and trainer volumeMounts,
the pod securityContext (merged over the locked-down defaults), topologySpread-
Constraints, hostNetwork, extra env/envFrom. Refused, with the field named: anything the
operator owns (its labels/annotations, volumes, mount paths, environment names; the
command and the containers themselves are not fields here at all).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator
from pydantic.alias_generators import to_camel

from finetune_operator import constants as c
from finetune_operator import scheduling as g
from finetune_runtime import contract

OPERATOR_VOLUMES = ("config", "checkpoints", "data", "dshm")
OPERATOR_MOUNT_PATHS = (c.CONFIG_DIR, c.CHECKPOINT_DIR, c.DATA_DIR, contract.SHM_DIR)
RESERVED_LABEL_PREFIXES = (f"{c.GROUP}/", "app.kubernetes.io/")
RESERVED_ANNOTATION_PREFIXES = (f"{c.GROUP}/",)
MAX_ITEMS = 64


def _open_object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> Any:
    """A Kubernetes object passed through as is, declaring the fields CEL rules read (CEL
    cannot see undeclared fields of a preserve-unknown-fields object)."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": True,
    }
    if required:
        schema["required"] = list(required)
    return WithJsonSchema(schema)


Volume = Annotated[dict[str, Any], _open_object({"name": {"type": "string"}}, ("name",))]
VolumeMount = Annotated[
    dict[str, Any],
    _open_object(
        {"name": {"type": "string"}, "mountPath": {"type": "string"}}, ("name", "mountPath")
    ),
]
SecurityContext = Annotated[
    dict[str, Any],
    _open_object({"runAsNonRoot": {"type": "boolean"}, "runAsUser": {"type": "integer"}}),
]


def _cel_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{item}'" for item in items) + "]"


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", populate_by_name=False, alias_generator=to_camel, frozen=True
    )


def _reserved_key(key: str, prefixes: tuple[str, ...], exact: tuple[str, ...]) -> bool:
    return key.startswith(prefixes) or key in exact


class PodTemplateMetadata(_Model):
    """Extra labels and annotations for every worker pod."""

    labels: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_ITEMS,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.all(k, !k.startsWith('finetune.dev/') && "
                    "!k.startsWith('app.kubernetes.io/') && "
                    f"!(k in {_cel_list(g.RESERVED_LABELS)}))",
                    "message": "labels under finetune.dev/, app.kubernetes.io/ and the gang "
                    "admission labels are set by the operator",
                }
            ]
        },
    )
    annotations: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_ITEMS,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.all(k, !k.startsWith('finetune.dev/') && "
                    f"!(k in {_cel_list(g.RESERVED_ANNOTATIONS)}))",
                    "message": "annotations under finetune.dev/ and the gang admission "
                    "annotations are set by the operator",
                }
            ]
        },
    )

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if _reserved_key(key, RESERVED_LABEL_PREFIXES, g.RESERVED_LABELS):
                raise ValueError(f"label {key!r} is set by the operator; use another key")
        return value

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if _reserved_key(key, RESERVED_ANNOTATION_PREFIXES, g.RESERVED_ANNOTATIONS):
                raise ValueError(f"annotation {key!r} is set by the operator; use another key")
        return value


class PodTemplateEnvVar(_Model):
    """An extra trainer environment variable (Kubernetes EnvVar form)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    name: str = Field(
        min_length=1,
        max_length=256,
        json_schema_extra={"x-kubernetes-validations": [c.RESERVED_ENV_RULE]},
    )
    value: str | None = None
    valueFrom: dict[str, Any] | None = None  # noqa: N815 - the Kubernetes field name

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return c.refuse_reserved_env(value)


class PodTemplateSpec(_Model):
    """Overrides merged onto each worker pod's spec (the trainer container for mounts/env)."""

    runtime_class_name: str | None = Field(None, min_length=1, max_length=253)
    host_network: bool | None = Field(
        None,
        description="Use the node's network namespace (e.g. for RDMA/InfiniBand). The "
        "rendezvous and progress ports then bind on the node.",
    )
    security_context: SecurityContext | None = Field(
        None,
        description="PodSecurityContext merged over the defaults (runAsNonRoot: true, "
        "seccompProfile RuntimeDefault); e.g. runAsUser/fsGroup where a policy needs them. "
        "runAsNonRoot cannot be turned off.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.runAsNonRoot) || self.runAsNonRoot == true",
                    "message": "workers always run as non-root: drop runAsNonRoot: false",
                },
                {
                    "rule": "!has(self.runAsUser) || self.runAsUser != 0",
                    "message": "runAsUser 0 is root; workers always run as non-root",
                },
            ]
        },
    )
    topology_spread_constraints: list[dict[str, Any]] = Field(
        default_factory=list, max_length=MAX_ITEMS
    )
    volumes: list[Volume] = Field(
        default_factory=list,
        max_length=MAX_ITEMS,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.all(v, !has(v.name) || "
                    f"!(v.name in {_cel_list(OPERATOR_VOLUMES)}))",
                    "message": "volume names config, checkpoints, data and dshm are the operator's",
                }
            ]
        },
    )
    volume_mounts: list[VolumeMount] = Field(
        default_factory=list,
        max_length=MAX_ITEMS,
        description="Mounts for the trainer container (of volumes listed here).",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.all(m, !has(m.mountPath) || "
                    f"!(m.mountPath in {_cel_list(OPERATOR_MOUNT_PATHS)}))",
                    "message": "mount paths /etc/finetune, /checkpoints, /data and /dev/shm are "
                    "the operator's",
                }
            ]
        },
    )
    env: list[PodTemplateEnvVar] = Field(default_factory=list, max_length=MAX_ITEMS)
    env_from: list[dict[str, Any]] = Field(default_factory=list, max_length=MAX_ITEMS)

    @field_validator("security_context")
    @classmethod
    def _non_root(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("runAsNonRoot") is False:
            raise ValueError("workers always run as non-root: drop runAsNonRoot: false")
        if value is not None and value.get("runAsUser") == 0:
            raise ValueError("runAsUser 0 is root; workers always run as non-root")
        return value

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, volume in enumerate(value):
            if not isinstance(volume.get("name"), str) or not volume["name"]:
                raise ValueError(f"volumes[{i}] needs a name")
            if volume["name"] in OPERATOR_VOLUMES:
                raise ValueError(
                    f"volume name {volume['name']!r} is the operator's "
                    f"({', '.join(OPERATOR_VOLUMES)}); pick another name"
                )
        return value

    @field_validator("volume_mounts")
    @classmethod
    def _mounts(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, mount in enumerate(value):
            path = str(mount.get("mountPath") or "")
            if not mount.get("name") or not path:
                raise ValueError(f"volumeMounts[{i}] needs a name and a mountPath")
            if any(path.rstrip("/") == own for own in OPERATOR_MOUNT_PATHS):
                raise ValueError(f"mountPath {path!r} is where the operator mounts its own volume")
        return value


class PodTemplate(_Model):
    """Worker pod customisation: `metadata` (labels, annotations) and `spec` overrides."""

    metadata: PodTemplateMetadata = Field(default_factory=PodTemplateMetadata)
    spec: PodTemplateSpec = Field(default_factory=PodTemplateSpec)


def apply_pod_template(pod: dict[str, Any], template: PodTemplate | None) -> dict[str, Any]:
    """Merge `template` onto a worker pod built by the operator (modified in place)."""
    if template is None:
        return pod
    meta, spec, t = pod["metadata"], pod["spec"], template.spec
    if template.metadata.labels:
        meta["labels"] = {**template.metadata.labels, **meta.get("labels", {})}
    if template.metadata.annotations:
        meta["annotations"] = {**template.metadata.annotations, **meta.get("annotations", {})}
    if t.runtime_class_name is not None:
        spec["runtimeClassName"] = t.runtime_class_name
    if t.host_network is not None:
        spec["hostNetwork"] = t.host_network
        if t.host_network:
            spec["dnsPolicy"] = "ClusterFirstWithHostNet"  # keep resolving the rendezvous
    if t.security_context:
        spec["securityContext"] = {**spec.get("securityContext", {}), **t.security_context}
    if t.topology_spread_constraints:
        spec["topologySpreadConstraints"] = list(t.topology_spread_constraints)
    if t.volumes:
        spec["volumes"] = spec.get("volumes", []) + list(t.volumes)
    trainer = next(x for x in spec["containers"] if x["name"] == c.TRAINER_CONTAINER)
    if t.volume_mounts:
        trainer["volumeMounts"] = trainer.get("volumeMounts", []) + list(t.volume_mounts)
    if t.env:
        trainer["env"] = trainer.get("env", []) + [
            item.model_dump(exclude_none=True) for item in t.env
        ]
    if t.env_from:
        trainer["envFrom"] = list(t.env_from)
    return pod
