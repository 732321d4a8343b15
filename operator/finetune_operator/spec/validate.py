"""Validating a whole FineTuneJob: its spec, its name, its admission and its training config.

`validate_job` turns a raw FineTuneJob body into a `ValidJob` (spec + parsed training
config) or raises `SpecError`, whose message names every offending spec field (and,
for the training config, the config field and line) and says what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from finetune_operator import constants as c
from finetune_operator.scheduling import KUEUE_QUEUE_LABEL, kueue_queue
from finetune_operator.spec.base import DNS_LABEL
from finetune_operator.spec.errors import SpecError, SpecIssue, spec_issues
from finetune_operator.spec.job import FineTuneJobSpec


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
        raise SpecError(spec_issues(exc)) from None


def check_name(name: str, nodes: int) -> list[SpecIssue]:
    """The job name becomes a Service name and part of pod hostnames (DNS labels)."""
    hostname = f"{name}-worker-{max(nodes - 1, 0)}"
    if not DNS_LABEL.match(name):
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
    return check_job(body.get("metadata") or {}, parse_spec(body.get("spec")))


def config_source(meta: dict[str, Any]) -> str:
    """How config errors name where the config came from."""
    return f"FineTuneJob {meta.get('namespace', '')}/{meta.get('name', '')} spec.config"


def check_job(meta: dict[str, Any], spec: FineTuneJobSpec) -> ValidJob:
    """Everything past the spec model: the name, admission, the training config, outputs."""
    issues = check_name(meta.get("name", ""), spec.nodes) + check_admission(meta, spec)
    if issues:
        raise SpecError(issues)
    config = _parse_config(spec, config_source(meta))
    _check_outputs(spec, config.adapter)
    return ValidJob(spec=spec, config=config)


def _parse_config(spec: FineTuneJobSpec, source: str) -> Any:
    from finetune_runtime.config import parse_config
    from finetune_runtime.errors import ConfigError

    try:
        return parse_config(spec.config, source=source)
    except ConfigError as exc:
        issues = [
            SpecIssue(f"spec.config.{i.field}" if i.field else "spec.config", i.message)
            for i in exc.issues
        ]
        raise SpecError(issues, text=str(exc)) from None


def _check_outputs(spec: FineTuneJobSpec, adapter: str) -> None:
    """spec.output.merge needs an adapter that can be merged."""
    from finetune_runtime.contract import merge_refusal

    if spec.output is None or not spec.output.merge:
        return
    reason = merge_refusal(adapter)
    if reason is not None:
        raise SpecError([SpecIssue("spec.output.merge", f"{reason}: drop merge")])
