"""A FineTuneJob parsed once per reconcile cycle into typed objects that are passed down.

`parse_job(body)` reads the body once: its identity, generation, Kueue queue, the spec
model and the run policy (the spec's, or the defaults while the spec is invalid). The
expensive part, the training config and the effective config a pod runs, is checked at
most once per cycle, on first use (`ParsedJob.checked`): a finished job without
`spec.serve` never parses its config at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from finetune_operator import names
from finetune_operator import scheduling as g
from finetune_operator.effective import effective_config_yaml
from finetune_operator.jobref import JobRef
from finetune_operator.spec.errors import SpecError
from finetune_operator.spec.job import FineTuneJobSpec
from finetune_operator.spec.run_policy import RunPolicy
from finetune_operator.spec.validate import ValidJob, check_job, parse_spec


@dataclass(frozen=True)
class CheckedJob:
    """A job that can run: its spec, its training config and the config its pods run."""

    spec: FineTuneJobSpec
    config: Any  # finetune_runtime.config.FineTuneConfig
    config_yaml: str  # the effective config (pod paths), what the ConfigMap holds


@dataclass(frozen=True)
class ParsedJob:
    """One FineTuneJob as a reconcile cycle reads it (built by `parse_job`)."""

    ref: JobRef
    meta: dict[str, Any] = field(repr=False)
    generation: int | None
    deleting: bool
    queue: str | None  # the Kueue LocalQueue (kueue.x-k8s.io/queue-name label)
    serve_requested: bool  # spec.serve is set (even while the spec is invalid)
    run_policy: RunPolicy
    spec: FineTuneJobSpec | None  # None while the spec is invalid (see `checked`)
    spec_error: SpecError | None = field(default=None, repr=False)

    @property
    def claim_name(self) -> str:
        """The checkpoint PVC: spec.storage.existingClaim or the one the operator creates."""
        return names.claim_name(self.ref, self.spec)

    @cached_property
    def valid(self) -> ValidJob | SpecError:
        """The whole job validated (name, admission, config, outputs), or why it is not."""
        if self.spec is None:
            assert self.spec_error is not None
            return self.spec_error
        try:
            return check_job(self.meta, self.spec)
        except SpecError as exc:
            return exc

    @cached_property
    def checked(self) -> CheckedJob | SpecError:
        """`valid` plus the effective config its pods run, or why the job cannot run."""
        valid = self.valid
        if isinstance(valid, SpecError):
            return valid
        try:
            yaml = effective_config_yaml(valid.config, valid.spec)
        except SpecError as exc:
            return exc
        return CheckedJob(valid.spec, valid.config, yaml)


def parse_job(body: dict[str, Any]) -> ParsedJob:
    """Parse a FineTuneJob body once; never raises for a bad spec (see `checked`)."""
    meta = body.get("metadata") or {}
    raw = body.get("spec")
    spec: FineTuneJobSpec | None = None
    error: SpecError | None = None
    try:
        spec = parse_spec(raw)
    except SpecError as exc:
        error = exc
    return ParsedJob(
        ref=JobRef.from_body(body),
        meta=meta,
        generation=meta.get("generation"),
        deleting=bool(meta.get("deletionTimestamp")),
        queue=g.kueue_queue(meta.get("labels")),
        serve_requested=isinstance(raw, dict) and bool(raw.get("serve")),
        run_policy=spec.run_policy if spec is not None else _run_policy_alone(raw),
        spec=spec,
        spec_error=error,
    )


def _run_policy_alone(raw: Any) -> RunPolicy:
    """The run policy of an invalid spec (its defaults if it is invalid too): a failed job
    still honours cleanPodPolicy and ttlSecondsAfterFinished."""
    policy = (raw.get("runPolicy") if isinstance(raw, dict) else None) or {}
    try:
        return RunPolicy.model_validate(policy)
    except Exception:  # noqa: BLE001 - an invalid runPolicy falls back to the defaults
        return RunPolicy()
