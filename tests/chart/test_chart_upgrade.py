"""The documented CRD upgrade path, on the real control plane (tests/kubeharness).

Helm installs CRDs from `crds/` once and never upgrades them, so docs/install.md (Upgrade) and
the chart README tell users to apply the new chart's CRD with
`helm show crds CHART | kubectl apply --server-side --force-conflicts -f -` and then
`helm upgrade`. This test does exactly that with the real helm and kubectl against the real
kube-apiserver: install the chart, create a FineTuneJob with a status, make a next chart
version whose CRD has a new field and printer column, run the documented commands, and check
that the existing job kept its uid, spec and status, still takes status writes (as the
operator makes them), and that the new schema is served. The operator's pod is kept Pending
by a nodeSelector no node has: no image can run here, and the test is about the API objects.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_helpers import CHART, REPO, run_helm

RELEASE = "ftop-upgrade"
NAMESPACE = "chart-upgrade"
CRD_NAME = "finetunejobs.finetune.dev"
pytestmark = pytest.mark.slow  # starts the session's control plane, like the operator suites

PENDING = ["--set-string", "nodeSelector.finetune\\.dev/no-such-node=true"]


def _kubectl(tools: Any, kubeconfig: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(tools.kubectl), "--kubeconfig", str(kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return run


def next_chart_version(target: Path) -> Path:
    """The chart's next version: 0.1.1, whose CRD gained a field and a printer column."""
    chart = target / "finetune-operator"
    shutil.copytree(CHART, chart)
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    meta["version"] = "0.1.1"
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    crd_path = chart / "crds" / "finetunejob.yaml"
    crd = yaml.safe_load(crd_path.read_text())
    (version,) = crd["spec"]["versions"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["upgradeNote"] = {"type": "string", "description": "Added in 0.1.1."}
    version["additionalPrinterColumns"].append(
        {"name": "Note", "type": "string", "jsonPath": ".spec.upgradeNote"}
    )
    crd_path.write_text(yaml.safe_dump(crd, sort_keys=False))
    return chart


@pytest.fixture
def upgrade_env(kube: Any, kube_tools: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    kubeconfig = Path(kube.admin_kubeconfig)
    home = tmp_path / "helm-home"

    def helm(*args: str) -> subprocess.CompletedProcess[str]:
        return run_helm(kube_tools.helm, home, *args, "--kubeconfig", str(kubeconfig))

    kubectl = _kubectl(kube_tools, kubeconfig)
    original_crd = (CHART / "crds" / "finetunejob.yaml").read_text()
    yield {"helm": helm, "kubectl": kubectl, "tmp": tmp_path}
    kubectl("delete", "ftj", "--all", "-n", NAMESPACE, "--wait=false")
    helm("uninstall", RELEASE, "-n", NAMESPACE)
    # Other tests of the session expect the committed CRD: put it back.
    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=original_crd)
    kubectl("delete", "namespace", NAMESPACE, "--wait=false")


def test_documented_crd_upgrade_keeps_existing_finetunejobs(upgrade_env: dict[str, Any]) -> None:
    helm, kubectl = upgrade_env["helm"], upgrade_env["kubectl"]
    installed = helm(
        "install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace", *PENDING
    )
    assert installed.returncode == 0, installed.stderr
    assert kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}").returncode == 0

    example = yaml.safe_load((REPO / "examples" / "finetune-tiny-cpu.yaml").read_text())
    example["metadata"]["namespace"] = NAMESPACE
    created = kubectl("apply", "-f", "-", stdin=yaml.safe_dump(example))
    assert created.returncode == 0, created.stderr
    status = {"status": {"phase": "Running", "attempt": 1, "restarts": 0}}
    patched = kubectl(
        "patch", "ftj", "tiny-cpu", "-n", NAMESPACE, "--subresource=status",
        "--type=merge", "-p", json.dumps(status),
    )  # fmt: skip
    assert patched.returncode == 0, patched.stderr
    before = json.loads(kubectl("get", "ftj", "tiny-cpu", "-n", NAMESPACE, "-o", "json").stdout)

    chart = next_chart_version(upgrade_env["tmp"])
    shown = helm("show", "crds", str(chart))
    assert shown.returncode == 0, shown.stderr
    crd = json.loads(kubectl("get", "crd", CRD_NAME, "-o", "json", "--show-managed-fields").stdout)
    managers = {entry["manager"] for entry in crd["metadata"].get("managedFields", [])}
    if "helm" in managers:  # helm created it: without --force-conflicts the apply stops
        refused = kubectl("apply", "--server-side", "-f", "-", stdin=shown.stdout)
        assert refused.returncode != 0 and "conflict" in refused.stderr.lower(), refused.stderr
    applied = kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=shown.stdout
    )  # the documented step
    assert applied.returncode == 0, applied.stderr
    assert kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}").returncode == 0
    upgraded = helm(
        "upgrade", RELEASE, str(chart), "-n", NAMESPACE, *PENDING,
        "--set", "operator.extraArgs={--resync-seconds,10}",
    )  # fmt: skip
    assert upgraded.returncode == 0, upgraded.stderr
    assert "finetune-operator --version 0.1.1 | kubectl apply --server-side" in upgraded.stdout

    after = json.loads(kubectl("get", "ftj", "tiny-cpu", "-n", NAMESPACE, "-o", "json").stdout)
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["spec"] == before["spec"] and after["status"] == before["status"]
    status["status"]["phase"] = "Succeeded"
    assert kubectl(
        "patch", "ftj", "tiny-cpu", "-n", NAMESPACE, "--subresource=status",
        "--type=merge", "-p", json.dumps(status),
    ).returncode == 0  # fmt: skip
    noted = kubectl(
        "patch", "ftj", "tiny-cpu", "-n", NAMESPACE, "--type=merge",
        "-p", json.dumps({"spec": {"upgradeNote": "kept"}}),
    )  # fmt: skip
    assert noted.returncode == 0, noted.stderr  # the new field is served, not pruned
    table = kubectl("get", "ftj", "tiny-cpu", "-n", NAMESPACE)
    assert "NOTE" in table.stdout and "kept" in table.stdout and "Succeeded" in table.stdout

    deployment = json.loads(
        kubectl(
            "get", "deploy", f"{RELEASE}-finetune-operator", "-n", NAMESPACE, "-o", "json"
        ).stdout
    )
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-2:] == ["--resync-seconds", "10"]
    history = helm("history", RELEASE, "-n", NAMESPACE, "-o", "json")
    assert [r["chart"] for r in json.loads(history.stdout)] == [
        "finetune-operator-0.1.0",
        "finetune-operator-0.1.1",
    ]
