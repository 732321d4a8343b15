"""spec.runPolicy: restarts, deadlines, cleanup, startup timeout and gang admission."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from finetune_operator.scheduling import SchedulingPolicy
from finetune_operator.spec.base import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_STARTUP_TIMEOUT_SECONDS,
    SpecModel,
)


class RunPolicy(SpecModel):
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
