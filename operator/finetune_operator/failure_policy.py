"""Which worker failures end the job: spec.runPolicy.restartPolicy and the runtime's codes.

Kubeflow's meanings: OnFailure restarts the gang, Never fails the job, ExitCode fails it
on exit codes 1-127 (the program's own verdict) and restarts it on 128+ (killed by a
signal: preemption, OOM kill, node shutdown). The runtime's user-error exit codes
(finetune_runtime.contract.USER_ERROR_EXIT_CODES: bad config, bad dataset) are permanent
under OnFailure and ExitCode too: the same input fails the same way again.
"""

from __future__ import annotations

from typing import Any

from finetune_operator import constants as c
from finetune_operator.redact import redact
from finetune_runtime.contract import USER_ERROR_EXIT_CODES

LOG_LINES = 20  # last lines of a failed trainer copied into the Failed condition
LOG_BYTES = 4096  # read at most this much log per pod (the shell's pods/log limitBytes)
LOG_CHARS = 1500  # and keep at most this much of it in the message


def exit_codes(pod: dict[str, Any]) -> list[tuple[str, int]]:
    """(container, exit code) of every container that terminated non-zero."""
    status = pod.get("status") or {}
    out = []
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        term = (cs.get("state") or {}).get("terminated") or {}
        code = term.get("exitCode")
        if isinstance(code, int) and code != 0:
            out.append((str(cs.get("name")), code))
    return out


def permanent_reason(pod: dict[str, Any], restart_policy: str) -> str | None:
    """Why this failed pod must not be retried (None: a gang restart may help)."""
    if restart_policy == "Never":
        return "spec.runPolicy.restartPolicy is Never"
    for container, code in exit_codes(pod):
        if code in USER_ERROR_EXIT_CODES:
            return (
                f"container {container} exit code {code} is {USER_ERROR_EXIT_CODES[code]}: "
                "fix the job, retrying cannot help"
            )
        if restart_policy == "ExitCode" and 1 <= code <= 127:
            return (
                f"container {container} exit code {code} is permanent under "
                "spec.runPolicy.restartPolicy ExitCode (1-127; 128+ is retried)"
            )
    return None


def log_tail(text: str | None) -> str:
    """The last lines of a trainer log, credentials masked, bounded."""
    if not text:
        return ""
    lines = text.rstrip("\n").splitlines()[-LOG_LINES:]
    tail = redact("\n".join(lines))
    return tail[-LOG_CHARS:]


def log_container(pod: dict[str, Any]) -> str:
    """The container whose log explains a failed pod: the first that failed, else the trainer."""
    failed = exit_codes(pod)
    return failed[0][0] if failed else c.TRAINER_CONTAINER
