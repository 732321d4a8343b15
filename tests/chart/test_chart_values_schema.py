"""Bad values are rejected by helm itself (values.schema.json or a template `fail`) with a message
that names the offending key."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from chart_helpers import CHART

BAD_VALUES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("unknown top-level key", {"replicas": 2}, ["replicas", "not allowed"]),
    ("leader: zero replicas", {"replicaCount": 0}, ["/replicaCount"]),
    ("typo in a nested key", {"metrics": {"prot": 8080}}, ["/metrics", "prot"]),
    ("port out of range", {"metrics": {"port": 70000}}, ["/metrics/port", "65,535"]),
    ("port as text", {"health": {"port": "http"}}, ["/health/port", "integer"]),
    ("unknown rbac scope", {"rbac": {"scope": "global"}}, ["/rbac/scope", "cluster"]),
    (
        "namespace scope without namespaces",
        {"rbac": {"scope": "namespace"}},
        ["/watchNamespaces", "minItems"],
    ),
    ("invalid namespace name", {"watchNamespaces": ["Team_A"]}, ["/watchNamespaces/0"]),
    ("duplicate namespace", {"watchNamespaces": ["a", "a"]}, ["/watchNamespaces", "a"]),
    ("bad pull policy", {"image": {"pullPolicy": "Sometimes"}}, ["/image/pullPolicy"]),
    ("empty repository", {"image": {"repository": ""}}, ["/image/repository"]),
    ("tag with a space", {"runtimeImage": {"tag": "v 1"}}, ["/runtimeImage/tag"]),
    ("root user", {"podSecurityContext": {"runAsUser": 0}}, ["/podSecurityContext/runAsUser"]),
    (
        "runAsNonRoot off",
        {"podSecurityContext": {"runAsNonRoot": False}},
        ["/podSecurityContext/runAsNonRoot"],
    ),
    (
        "privilege escalation",
        {"securityContext": {"allowPrivilegeEscalation": True}},
        ["/securityContext/allowPrivilegeEscalation"],
    ),
    (
        "added capability",
        {"securityContext": {"capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}}},
        ["/securityContext/capabilities/add"],
    ),
    (
        "wildcard rbac verb",
        {"rbac": {"extraRules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}]}},
        ["/rbac/extraRules/0/verbs/0"],
    ),
    (
        "secrets access",
        {"rbac": {"extraRules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}},
        ["/rbac/extraRules/0/resources/0"],
    ),
    (
        "bad scrape interval",
        {"metrics": {"serviceMonitor": {"enabled": True, "interval": "often"}}},
        ["/metrics/serviceMonitor/interval"],
    ),
    ("bad memory quantity", {"resources": {"limits": {"memory": "lots"}}}, ["/resources/limits"]),
    ("labels must be strings", {"podLabels": {"team": 7}}, ["/podLabels/team", "string"]),
]


@pytest.mark.parametrize(
    ("values", "fragments"),
    [pytest.param(v, f, id=name) for name, v, f in BAD_VALUES],
)
def test_bad_values_are_rejected_by_the_schema(
    helm_fails: Callable[..., str], values: dict[str, Any], fragments: list[str]
) -> None:
    error = helm_fails(values=values)
    assert "values don't meet the specifications of the schema" in error, error
    for fragment in fragments:
        assert fragment in error, f"{fragment!r} not in helm's message:\n{error}"


def test_service_monitor_without_service_fails_with_a_hint(helm_fails: Callable[..., str]) -> None:
    error = helm_fails(
        sets=["metrics.serviceMonitor.enabled=true", "metrics.service.enabled=false"]
    )
    assert "metrics.service.enabled=true" in error


def test_leader_replicas_need_leader_election(helm_fails: Callable[..., str]) -> None:
    error = helm_fails(values={"replicaCount": 3, "leaderElection": {"enabled": False}})
    assert "replicaCount=3 needs leaderElection.enabled=true" in error


def test_external_service_account_needs_a_name(helm_fails: Callable[..., str]) -> None:
    error = helm_fails(sets=["serviceAccount.create=false"])
    assert "serviceAccount.name is required" in error


def test_template_guard_backs_up_the_schema(helm: Callable[..., Any], tmp_path: Any) -> None:
    """With schema validation skipped, the template itself still refuses an unusable combination."""
    values = tmp_path / "v.yaml"
    values.write_text(yaml.safe_dump({"rbac": {"scope": "namespace"}}))
    result = helm("template", "x", str(CHART), "--skip-schema-validation", "--values", str(values))
    assert result.returncode != 0
    assert "rbac.scope=namespace needs the namespaces to watch" in result.stderr


def test_default_values_satisfy_the_schema_and_document_every_key() -> None:
    """Every schema property has a default in values.yaml (nothing hidden), and vice versa."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    documented = set(schema["properties"]) - {"global"}
    assert documented == set(values), documented ^ set(values)
