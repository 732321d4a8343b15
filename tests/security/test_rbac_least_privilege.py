"""Least privilege as rendered by the real `helm` binary, in both RBAC scopes.

The chart's own tests check that each grant is used (test_chart_rbac_audit.py records the
real operator's calls); these check what must never be granted: Secrets, wildcards,
privilege escalation verbs, exec/attach/proxy, RBAC writes, bindings to anyone but the
operator's ServiceAccount; and that the operator's own pod is hardened.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_binary import helm_bin, k8s_tools  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "finetune-operator"
NAMESPACE = "finetune-system"

SCOPES = {
    "cluster": [],
    "namespace": [
        "rbac.scope=namespace",
        "watchNamespaces[0]=team-a",
        "watchNamespaces[1]=team-b",
    ],
}
FORBIDDEN_RESOURCES = {
    "secrets",
    "pods/exec",
    "pods/attach",
    "pods/portforward",
    "nodes/proxy",
    "services/proxy",
    "serviceaccounts/token",
    "roles",
    "rolebindings",
    "clusterroles",
    "clusterrolebindings",
    "certificatesigningrequests",
    "mutatingwebhookconfigurations",
    "validatingwebhookconfigurations",
}
FORBIDDEN_VERBS = {"*", "escalate", "bind", "impersonate", "deletecollection"}


def render(helm: Path, home: Path, sets: list[str]) -> list[dict[str, Any]]:
    args = [str(helm), "template", "ftop", str(CHART), "--namespace", NAMESPACE]
    for item in sets:
        args += ["--set", item]
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "HELM_CACHE_HOME": str(home / "c")}
    env |= {"HELM_CONFIG_HOME": str(home / "cfg"), "HELM_DATA_HOME": str(home / "d")}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.mark.parametrize("scope", sorted(SCOPES))
def test_rbac_never_grants_secrets_wildcards_or_escalation(
    helm_bin: Path,  # noqa: F811
    tmp_path: Path,
    scope: str,
) -> None:
    objects = render(helm_bin, tmp_path, SCOPES[scope])
    roles = [o for o in objects if o["kind"] in ("Role", "ClusterRole")]
    bindings = [o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert roles and bindings
    for role in roles:
        for rule in role.get("rules") or []:
            where = f"{role['kind']} {role['metadata']['name']}: {rule}"
            assert "nonResourceURLs" not in rule, where
            assert not rule.get("resourceNames") or rule.get("resources"), where
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in (rule.get(field) or []), where
            assert not FORBIDDEN_RESOURCES & set(rule.get("resources") or []), where
            assert not FORBIDDEN_VERBS & set(rule.get("verbs") or []), where
            if "pods" in (rule.get("resources") or []):
                assert set(rule["verbs"]) <= {"get", "list", "watch", "create", "delete"}, where
    (account,) = [o for o in objects if o["kind"] == "ServiceAccount"]
    for binding in bindings:
        assert binding["subjects"] == [
            {
                "kind": "ServiceAccount",
                "name": account["metadata"]["name"],
                "namespace": NAMESPACE,
            }
        ], binding
        assert binding["roleRef"]["name"] in {r["metadata"]["name"] for r in roles}
    if scope == "namespace":
        cluster_rules = [
            rule for role in roles if role["kind"] == "ClusterRole" for rule in role["rules"]
        ]
        assert all(set(rule["verbs"]) <= {"list", "watch"} for rule in cluster_rules)


def test_the_operator_pod_is_hardened(helm_bin: Path, tmp_path: Path) -> None:  # noqa: F811
    objects = render(helm_bin, tmp_path, [])
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc.get("privileged")
        from_secrets = [e for e in container.get("env") or [] if "secretKeyRef" in str(e)]
        assert not from_secrets, "the operator needs no credentials of its own"
