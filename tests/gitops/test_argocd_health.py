"""The Argo CD health check (argocd/health.lua), run in a real Lua interpreter via lupa.

Argo CD embeds gopher-lua, a Lua 5.1 implementation; every case runs on Lua 5.1 and on 5.4 so
the script relies on nothing version-specific.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import yaml
from gitops_paths import ARGOCD_CM_PATCH, HEALTH_LUA
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SCRIPT = HEALTH_LUA.read_text()
RUNTIMES = ["lua51", "lua54"]
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
PHASES = ["Pending", "Created", "Running", "Restarting", "Succeeded", "Failed", "Suspended"]


class ArgoHealth:
    """Runs the script the way Argo CD does: the resource as global `obj`, the chunk's return."""

    def __init__(self, runtime: str) -> None:
        lupa = importlib.import_module(f"lupa.{runtime}")
        self.lua = lupa.LuaRuntime(unpack_returned_tuples=True)
        # Argo CD opens only the base, table, string and math libraries: hide everything else so
        # a script that relies on it fails here too.
        hidden = ("os", "io", "debug", "package", "require", "dofile", "loadfile", "coroutine")
        for name in hidden:
            self.lua.globals()[name] = None

    def __call__(self, obj: dict[str, Any]) -> dict[str, str]:
        self.lua.globals().obj = self.lua.table_from(obj, recursive=True)
        result = self.lua.execute(SCRIPT)
        health = {str(k): v for k, v in dict(result).items()}
        assert set(health) <= {"status", "message"}, health
        assert health["status"] in ARGO_STATUSES, health
        assert isinstance(health.get("message", ""), str), health
        return health


@pytest.fixture(scope="module", params=RUNTIMES)
def health(request: pytest.FixtureRequest) -> ArgoHealth:
    return ArgoHealth(request.param)


def job(status: dict[str, Any] | None = None, generation: int = 3) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "llama-lora", "namespace": "ml", "generation": generation},
        "spec": {"nodes": 2},
    }
    if status is not None:
        obj["status"] = status
    return obj


def cond(ctype: str, reason: str | None = None, message: str | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {
        "type": ctype,
        "status": "True",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    if reason is not None:
        c["reason"] = reason
    if message is not None:
        c["message"] = message
    return c


def test_no_status_is_progressing(health: ArgoHealth) -> None:
    assert health(job())["status"] == "Progressing"
    assert health(job({}))["status"] == "Progressing"
    assert health(job({"conditions": []}))["status"] == "Progressing"


def test_succeeded_is_healthy(health: ArgoHealth) -> None:
    result = health(
        job(
            {
                "phase": "Succeeded",
                "observedGeneration": 3,
                "conditions": [cond("Running"), cond("Succeeded", "Completed", "all 2 workers")],
            }
        )
    )
    assert result == {"status": "Healthy", "message": "Completed: all 2 workers"}


def test_failed_is_degraded_with_the_condition_message(health: ArgoHealth) -> None:
    message = "FineTuneJob ml/llama-lora spec.config:4: lora.r: must be greater than 0"
    result = health(
        job(
            {
                "phase": "Failed",
                "observedGeneration": 3,
                "conditions": [cond("Created"), cond("Failed", "InvalidSpec", message)],
            }
        )
    )
    assert result == {"status": "Degraded", "message": f"InvalidSpec: {message}"}


def test_the_true_condition_wins_over_a_stale_one(health: ArgoHealth) -> None:
    stale = {**cond("Failed", "InvalidSpec", "old problem"), "status": "False"}
    current = cond("Failed", "BackoffLimitExceeded", "3 restarts")
    result = health(job({"phase": "Failed", "conditions": [stale, current]}))
    assert result["message"] == "BackoffLimitExceeded: 3 restarts"


def test_failed_without_conditions_still_degraded(health: ArgoHealth) -> None:
    assert health(job({"phase": "Failed"})) == {"status": "Degraded", "message": "Failed"}
    only_reason = job({"phase": "Failed", "conditions": [cond("Failed", "BackoffLimitExceeded")]})
    assert health(only_reason)["message"] == "BackoffLimitExceeded"


@pytest.mark.parametrize("phase", ["Pending", "Created", "Running", "Restarting"])
def test_active_phases_are_progressing(health: ArgoHealth, phase: str) -> None:
    result = health(job({"phase": phase, "observedGeneration": 3}))
    assert result["status"] == "Progressing"
    assert result["message"].startswith(phase)


def test_running_shows_training_progress(health: ArgoHealth) -> None:
    progress = {"step": 120, "totalSteps": 1000, "percent": 12.0, "loss": 1.23456, "eta": "5m3s"}
    result = health(job({"phase": "Running", "observedGeneration": 3, "progress": progress}))
    assert result == {
        "status": "Progressing",
        "message": "Running: step 120/1000 (12.0%), loss 1.235, ETA 5m3s",
    }


def test_restarting_names_the_attempt(health: ArgoHealth) -> None:
    status = {
        "phase": "Restarting",
        "attempt": 2,
        "conditions": [cond("Restarting", "WorkerFailed", "worker 1 exited with code 137")],
    }
    result = health(job(status))
    assert result["status"] == "Progressing"
    assert result["message"] == "Restarting: attempt 2: WorkerFailed: worker 1 exited with code 137"


def test_suspended(health: ArgoHealth) -> None:
    result = health(job({"phase": "Suspended", "conditions": [cond("Suspended", "Suspended")]}))
    assert result["status"] == "Suspended"


@pytest.mark.parametrize("phase", PHASES)
def test_unobserved_spec_change_is_progressing_whatever_the_phase(
    health: ArgoHealth, phase: str
) -> None:
    result = health(job({"phase": phase, "observedGeneration": 2}, generation=3))
    assert result["status"] == "Progressing"
    assert "generation 3" in result["message"]


def test_unknown_phase(health: ArgoHealth) -> None:
    assert health(job({"phase": "Exploded"}))["status"] == "Unknown"


def test_malformed_status_never_breaks_the_script(health: ArgoHealth) -> None:
    weird = [
        {"phase": "Running", "conditions": "not-a-list", "progress": "50%"},
        {"phase": "Failed", "conditions": [None, 3, {"type": "Failed"}]},
        {"phase": "Running", "progress": {"step": "ten", "loss": None, "eta": 5}},
        {"phase": "Succeeded", "observedGeneration": "3"},
    ]
    for status in weird:
        health(job(status))  # validates the shape of the answer


status_strategy = st.fixed_dictionaries(
    {},
    optional={
        "phase": st.one_of(st.sampled_from(PHASES), st.text(max_size=12)),
        "observedGeneration": st.integers(min_value=0, max_value=6),
        "attempt": st.integers(min_value=0, max_value=5),
        "conditions": st.lists(
            st.builds(
                lambda ctype, reason, message, value: {
                    **cond(ctype, reason, message),
                    "status": value,
                },
                st.sampled_from(PHASES),
                st.one_of(st.none(), st.text(max_size=20)),
                st.one_of(st.none(), st.text(max_size=40)),
                st.sampled_from(["True", "False"]),
            ),
            max_size=4,
        ),
        "progress": st.fixed_dictionaries(
            {},
            optional={
                "step": st.integers(min_value=0, max_value=10**6),
                "totalSteps": st.integers(min_value=0, max_value=10**6),
                "percent": st.floats(min_value=0, max_value=100),
                "loss": st.floats(allow_nan=False, allow_infinity=False),
                "eta": st.text(max_size=8),
            },
        ),
    },
)


@pytest.mark.parametrize("runtime", RUNTIMES)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(status=st.one_of(st.none(), status_strategy), generation=st.integers(1, 6))
def test_health_follows_the_phase_table(
    runtime: str, status: dict[str, Any] | None, generation: int
) -> None:
    result = _runtimes(runtime)(job(status, generation=generation))
    phase = (status or {}).get("phase")
    observed = (status or {}).get("observedGeneration")
    if status is None or phase is None or (observed is not None and observed < generation):
        expected = "Progressing"
    else:
        expected = {
            "Succeeded": "Healthy",
            "Failed": "Degraded",
            "Suspended": "Suspended",
            "Pending": "Progressing",
            "Created": "Progressing",
            "Running": "Progressing",
            "Restarting": "Progressing",
        }.get(phase, "Unknown")
    assert result["status"] == expected, (status, result)
    if expected == "Degraded":
        assert status is not None
        failed = [c for c in status.get("conditions", []) if c["type"] == "Failed"]
        failed.sort(key=lambda c: c["status"] != "True")
        if failed and failed[0].get("message"):
            assert failed[0]["message"] in result["message"]


_CACHE: dict[str, ArgoHealth] = {}


def _runtimes(runtime: str) -> ArgoHealth:
    if runtime not in _CACHE:
        _CACHE[runtime] = ArgoHealth(runtime)
    return _CACHE[runtime]


def test_argocd_cm_patch_embeds_the_same_script() -> None:
    patch = yaml.safe_load(ARGOCD_CM_PATCH.read_text())
    assert patch["kind"] == "ConfigMap"
    assert patch["metadata"]["name"] == "argocd-cm"
    embedded = patch["data"]["resource.customizations.health.finetune.dev_FineTuneJob"]
    assert embedded == SCRIPT, "argocd/argocd-cm-patch.yaml is out of date with argocd/health.lua"
