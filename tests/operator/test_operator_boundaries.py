"""Boundaries: the operator stays small, and its CLI and metrics behave."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

import finetune_operator
from finetune_operator.main import build_parser
from finetune_operator.metrics import Metrics

HEAVY = ("torch", "transformers", "peft", "deepspeed", "bitsandbytes")
RUNTIME_ALLOWED = {
    "finetune_runtime",
    "finetune_runtime.config",
    "finetune_runtime.contract",
    "finetune_runtime.errors",
    "finetune_runtime.progress",  # the package (a docstring) around progress.document
    "finetune_runtime.progress.document",
    # the modules of the finetune_runtime.config package (pydantic + PyYAML only)
    *(
        f"finetune_runtime.config.{name}"
        for name in (
            "adapter",
            "axolotl",
            "axolotl_datasets",
            "axolotl_keys",
            "axolotl_state",
            "base",
            "dataset",
            "finetune",
            "loader",
            "rules",
            "tracking",
            "training",
            "translate",
            "yamlsafe",
        )
    ),
}


def test_operator_never_imports_the_training_stack():
    modules = sorted(
        f"finetune_operator.{m.name}" for m in pkgutil.iter_modules(finetune_operator.__path__)
    )
    assert "finetune_operator.handlers" in modules and "finetune_operator.crd" in modules
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "from finetune_operator.crd import crd; crd()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert not {m for m in loaded if m.split(".")[0] in HEAVY}
    runtime = {m for m in loaded if m.split(".")[0] == "finetune_runtime"}
    assert runtime <= RUNTIME_ALLOWED, runtime - RUNTIME_ALLOWED


def test_cli_defaults_and_scopes():
    args = build_parser().parse_args([])
    assert args.namespace == [] and not args.all_namespaces
    assert (args.metrics_port, args.health_port) == (8080, 8081)
    assert args.progress_port == 9400 and args.resync_seconds == 5.0
    args = build_parser().parse_args(["--namespace", "a", "-n", "b", "--metrics-port", "9"])
    assert args.namespace == ["a", "b"] and args.metrics_port == 9
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--namespace", "a", "--all-namespaces"])


def test_cli_rejects_a_non_positive_resync(capsys):
    from finetune_operator.main import main

    assert main(["--resync-seconds", "0"]) == 2
    assert "--resync-seconds must be > 0" in capsys.readouterr().err


def samples(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    from prometheus_client import generate_latest

    out = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_track_phases_transitions_and_training():
    metrics = Metrics()
    metrics.observe(("ml", "a"), "Running", {"loss": 1.5, "step": 10, "percent": 12.5})
    metrics.observe(("ml", "b"), "Running", None)
    metrics.observe(("ml", "c"), "Failed", None)
    for reason in ("Created", "Restarting", "Succeeded", "Running"):
        metrics.transition(reason)
    metrics.transition("BackoffLimitExceeded", "BackoffLimitExceeded")
    metrics.reconcile_seconds.observe(0.01)
    got = samples(metrics)
    assert got[("finetune_operator_jobs", (("phase", "Running"),))] == 2
    assert got[("finetune_operator_jobs", (("phase", "Failed"),))] == 1
    assert got[("finetune_operator_jobs", (("phase", "Succeeded"),))] == 0
    assert got[("finetune_operator_jobs_created_total", ())] == 1
    assert got[("finetune_operator_jobs_restarted_total", ())] == 1
    assert got[("finetune_operator_jobs_succeeded_total", ())] == 1
    assert got[("finetune_operator_jobs_failed_total", (("reason", "BackoffLimitExceeded"),))] == 1
    assert got[("finetune_operator_reconcile_duration_seconds_count", ())] == 1
    labels = (("job", "a"), ("namespace", "ml"))
    assert got[("finetune_job_loss", labels)] == 1.5
    assert got[("finetune_job_step", labels)] == 10
    assert got[("finetune_job_progress_percent", labels)] == 12.5
    metrics.forget(("ml", "a"))
    got = samples(metrics)
    assert ("finetune_job_loss", labels) not in got
    assert got[("finetune_operator_jobs", (("phase", "Running"),))] == 1
