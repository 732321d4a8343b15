"""Values that would render a broken operator are refused by the real helm binary at template time.

Each case here once rendered cleanly and then failed later: the API server refused an object
(a Service name that is not a DNS-1035 label, requests above limits, pod labels that break the
Deployment's selector), the operator exited at start (an unknown flag, --namespace beside the
chart's --all-namespaces) or came up unreachable (metrics and health on one port). Single-field
rules live in values.schema.json; cross-field rules in templates/_validate.tpl (`fail`).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from chart_helpers import CHART, NAMESPACE

Helm = Callable[..., subprocess.CompletedProcess[str]]
Render = Callable[..., list[dict[str, Any]]]
Fails = Callable[..., str]

SCHEMA = "values don't meet the specifications of the schema"

# Flags of `finetune-operator` the chart refuses in operator.extraArgs: it renders them itself
# from values, or they would stop the operator from serving its probes.
REFUSED_FLAGS = {
    "--namespace": "watchNamespaces",
    "-n": "watchNamespaces",
    "--all-namespaces": "watchNamespaces",
    "-A": "watchNamespaces",
    "--metrics-port": "metrics.port",
    "--health-port": "health.port",
    "--default-image": "runtimeImage",
    "--bind-address": "pod IP",
    "--leader-elect": "leaderElection",
    "--leader-election-id": "rendered by the chart",
    "-h": "exits",
    "--help": "exits",
}
# A valid value for each flag the chart lets through (None: the flag takes no value).
ACCEPTED_FLAGS: dict[str, str | None] = {
    "--progress-port": "9500",
    "--resync-seconds": "2.5",
    "--log-format": "plain",
    "-v": None,
    "--verbose": None,
    "--worker-fs-group": "2000",
    "--leader-election-namespace": "finetune-system",
    "--leader-lease-seconds": "15",
}


def monitor(**settings: Any) -> dict[str, Any]:
    """Values enabling the ServiceMonitor with `settings`."""
    return {"metrics": {"serviceMonitor": {"enabled": True, **settings}}}


# (id, values, fragments of helm's message): refused by a template `fail`.
CROSS_FIELD: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "metrics and health on one port",
        {"metrics": {"port": 9000}, "health": {"port": 9000}},
        ["metrics.port and health.port are both 9000"],
    ),
    (
        "scrape timeout longer than the interval",
        monitor(interval="30s", scrapeTimeout="1m"),
        ['scrapeTimeout "1m" is longer than interval "30s"'],
    ),
    (
        "scrape timeout longer by milliseconds",
        monitor(interval="1s", scrapeTimeout="1s1ms"),
        ['scrapeTimeout "1s1ms" is longer than interval "1s"'],
    ),
    (
        "zero scrape interval",
        monitor(interval="0s", scrapeTimeout="0s"),
        ['interval "0s" must be longer than zero'],
    ),
    (
        "pod label the selector owns",
        {"podLabels": {"app.kubernetes.io/instance": "other"}},
        ["podLabels: app.kubernetes.io/instance is set by the chart"],
    ),
    (
        "pod label the chart sets on the pod",
        {"podLabels": {"app.kubernetes.io/component": "controller"}},
        ["podLabels: app.kubernetes.io/component is set by the chart"],
    ),
    (
        "ServiceMonitor label the chart sets",
        monitor(labels={"helm.sh/chart": "x"}),
        ["metrics.serviceMonitor.labels: helm.sh/chart is set by the chart"],
    ),
    (
        "cpu request above the limit",
        {"resources": {"requests": {"cpu": "1500m"}, "limits": {"cpu": 1}}},
        ["resources.requests.cpu (1500m) is more than resources.limits.cpu (1)"],
    ),
    (
        "memory request above the limit in other units",
        {"resources": {"requests": {"memory": "1Gi"}, "limits": {"memory": "1000M"}}},
        ["resources.requests.memory (1Gi) is more than resources.limits.memory (1000M)"],
    ),
    (
        "memory limit the operator cannot start in",
        {"resources": {"requests": {"memory": "64Mi"}, "limits": {"memory": "100Mi"}}},
        ["resources.limits.memory 100Mi is below 128Mi"],
    ),
    (
        "bind address moved off the pod IP by env",
        {"operator": {"env": [{"name": "FINETUNE_OPERATOR_BIND_ADDRESS", "value": "127.0.0.1"}]}},
        ["operator.env: FINETUNE_OPERATOR_BIND_ADDRESS"],
    ),
    (
        "unknown operator flag",
        {"operator": {"extraArgs": ["--frobnicate"]}},
        ["--frobnicate is not a finetune-operator flag"],
    ),
    (
        "log format the operator rejects",
        {"operator": {"extraArgs": ["--log-format", "xml"]}},
        ['--log-format takes json, plain or full, not "xml"'],
    ),
    (
        "flag missing its value",
        {"operator": {"extraArgs": ["--log-format"]}},
        ['--log-format takes json, plain or full, not ""'],
    ),
    (
        "zero resync interval",
        {"operator": {"extraArgs": ["--resync-seconds=0"]}},
        ['--resync-seconds takes a number of seconds above 0, not "0"'],
    ),
    (
        "zero resync interval as a number",
        {"operator": {"extraArgs": ["--resync-seconds", 0]}},
        ['--resync-seconds takes a number of seconds above 0, not "0"'],
    ),
    (
        "progress port out of range",
        {"operator": {"extraArgs": ["--progress-port", "70000"]}},
        ['--progress-port takes a port number (1-65535), not "70000"'],
    ),
]

# (id, values, fragments): refused by values.schema.json.
SCHEMA_REFUSED: list[tuple[str, dict[str, Any], list[str]]] = [
    ("fullnameOverride with capitals", {"fullnameOverride": "FineTune"}, ["/fullnameOverride"]),
    ("fullnameOverride starting with a digit", {"fullnameOverride": "1op"}, ["/fullnameOverride"]),
    ("nameOverride with a dot", {"nameOverride": "fine.tune"}, ["/nameOverride"]),
    ("nameOverride with an underscore", {"nameOverride": "fine_tune"}, ["/nameOverride"]),
    (
        "scrape interval in the wrong unit order",
        {"metrics": {"serviceMonitor": {"interval": "30s1m"}}},
        ["/metrics/serviceMonitor/interval"],
    ),
    (
        "env with both value and valueFrom",
        {"operator": {"env": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {}}}]}},
        ["/operator/env/0"],
    ),
    ("pod label value with a space", {"podLabels": {"team": "ML Platform"}}, ["/podLabels/team"]),
    (
        "ServiceMonitor label key with two slashes",
        {"metrics": {"serviceMonitor": {"labels": {"a/b/c": "x"}}}},
        ["invalid propertyName 'a/b/c'"],  # helm names the key, not its path
    ),
    ("priority class with capitals", {"priorityClassName": "High"}, ["/priorityClassName"]),
    ("image path with capitals", {"image": {"repository": "ghcr.io/Me/op"}}, ["/image/repository"]),
    ("image tag in the repository", {"image": {"repository": "op:1.0"}}, ["/image/repository"]),
    (
        "rbac rule without api groups",
        {"rbac": {"extraRules": [{"apiGroups": [], "resources": ["pods"], "verbs": ["get"]}]}},
        ["/rbac/extraRules/0/apiGroups"],
    ),
]


@pytest.mark.parametrize(
    ("values", "fragments"), [pytest.param(v, f, id=name) for name, v, f in CROSS_FIELD]
)
def test_cross_field_combinations_are_refused_by_the_templates(
    helm_fails: Fails, values: dict[str, Any], fragments: list[str]
) -> None:
    error = helm_fails(values=values)
    assert SCHEMA not in error, error
    for fragment in fragments:
        assert fragment in error, f"{fragment!r} not in helm's message:\n{error}"


@pytest.mark.parametrize(
    ("values", "fragments"), [pytest.param(v, f, id=name) for name, v, f in SCHEMA_REFUSED]
)
def test_single_field_mistakes_are_refused_by_the_schema(
    helm_fails: Fails, values: dict[str, Any], fragments: list[str]
) -> None:
    error = helm_fails(values=values)
    assert SCHEMA in error, error
    for fragment in fragments:
        assert fragment in error, f"{fragment!r} not in helm's message:\n{error}"


@pytest.mark.parametrize("flag", sorted(REFUSED_FLAGS))
def test_flags_the_chart_owns_are_refused_in_extra_args(helm_fails: Fails, flag: str) -> None:
    error = helm_fails(values={"operator": {"extraArgs": [f"{flag}=x"]}})
    assert f"operator.extraArgs: {flag} " in error and REFUSED_FLAGS[flag] in error, error


def test_every_operator_flag_is_either_accepted_or_refused_with_a_reason() -> None:
    """The chart's two flag lists cover the operator's real parser exactly (no stale entries)."""
    main = pytest.importorskip("finetune_operator.main")
    parser_flags = {s for action in main.build_parser()._actions for s in action.option_strings}
    assert parser_flags == set(REFUSED_FLAGS) | set(ACCEPTED_FLAGS)
    template = (CHART / "templates" / "_validate.tpl").read_text()
    for flag in parser_flags:
        assert f'"{flag}"' in template, f"{flag} is in neither list of _validate.tpl"


def test_accepted_extra_args_render_and_parse_with_the_operator(render: Render) -> None:
    main = pytest.importorskip("finetune_operator.main")
    extra: list[str] = []
    for flag, value in ACCEPTED_FLAGS.items():
        extra += [flag] if value is None else [flag, value]
    objects = render(values={"operator": {"extraArgs": extra}})
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    parsed = main.build_parser().parse_args(args)
    assert (parsed.progress_port, parsed.resync_seconds, parsed.log_format) == (9500, 2.5, "plain")
    assert parsed.verbose and parsed.all_namespaces


@pytest.mark.parametrize(
    "values",
    [
        monitor(interval="1m30s", scrapeTimeout="90s"),
        {"resources": {"requests": {"memory": "0.5Gi", "cpu": "1"}, "limits": {"memory": "512Mi"}}},
        {"fullnameOverride": "ftop", "nameOverride": "tuner", "imagePullSecrets": ["reg.example"]},
        {"podLabels": {"example.com/team": "ml-platform"}, "priorityClassName": "system.high"},
        {"image": {"repository": "localhost:5000/finetune_operator", "pullPolicy": "Never"}},
        {"operator": {"extraArgs": ["--resync-seconds", 10, "--progress-port", 9400]}},
    ],
    ids=[
        "timeout-equal-to-interval",
        "request-equal-to-limit",
        "overrides",
        "labels",
        "registry",
        "numeric-args",
    ],
)
def test_edge_values_that_work_are_accepted(render: Render, values: dict[str, Any]) -> None:
    assert render(values=values)


def test_a_release_name_that_cannot_name_the_metrics_service_is_refused(helm: Helm) -> None:
    """Helm accepts the release name `1ftop`; a Service name must start with a letter."""
    args = ["template", "1ftop", str(CHART), "--namespace", NAMESPACE]
    result = helm(*args)
    assert result.returncode != 0
    assert 'metrics Service name "1ftop-finetune-operator-metrics"' in result.stderr
    assert "--set fullnameOverride=" in result.stderr
    assert helm(*args, "--set", "fullnameOverride=ftop").returncode == 0
    assert helm(*args, "--set", "metrics.service.enabled=false").returncode == 0


def test_a_long_release_name_still_gives_a_valid_service_name(helm: Helm) -> None:
    release = "a" * 53  # the longest release name helm allows
    result = helm("template", release, str(CHART), "--namespace", NAMESPACE)
    assert result.returncode == 0, result.stderr
    names = [line.split()[-1] for line in result.stdout.splitlines() if "-metrics" in line]
    assert names and all(len(name) <= 63 for name in names), names
