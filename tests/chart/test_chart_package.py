"""The chart as a user meets it: a chart repository, its README's values table, its NOTES.

`helm package` + `helm repo index` must make a repository that the real helm can add over
HTTP, search, pull and render; the README's values table must be what
scripts/chart_values_table.py generates; the commands NOTES.txt prints must name objects
the chart really creates.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_helpers import CHART, NAMESPACE, REPO, by_kind

Helm = Callable[..., subprocess.CompletedProcess[str]]
Render = Callable[..., list[dict[str, Any]]]
SCRIPT = REPO / "scripts" / "chart_values_table.py"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        pass


@pytest.fixture
def chart_repo(helm: Helm, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A chart repository made by helm package + repo index, served over HTTP on loopback."""
    root = tmp_path / "repo"
    root.mkdir()
    packaged = helm("package", str(CHART), "--destination", str(root))
    assert packaged.returncode == 0, packaged.stderr
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    indexed = helm("repo", "index", str(root), "--url", url)
    assert indexed.returncode == 0, indexed.stderr
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield url, root
    finally:
        server.shutdown()
        server.server_close()


def test_packaged_chart_is_a_valid_repository(
    helm: Helm, chart_repo: tuple[str, Path], tmp_path: Path
) -> None:
    url, root = chart_repo
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    tarball = root / f"finetune-operator-{chart['version']}.tgz"
    index = yaml.safe_load((root / "index.yaml").read_text())
    assert index["apiVersion"] == "v1"
    (entry,) = index["entries"]["finetune-operator"]
    assert entry["version"] == chart["version"] and entry["appVersion"] == chart["appVersion"]
    assert entry["digest"] == hashlib.sha256(tarball.read_bytes()).hexdigest()
    assert entry["urls"] == [f"{url}/{tarball.name}"]
    for key in ("description", "home", "sources", "kubeVersion", "keywords"):
        assert entry.get(key), f"index entry lacks {key}"

    repo_name = "ftop-test"
    assert helm("repo", "add", repo_name, url).returncode == 0
    try:
        found = helm("search", "repo", f"{repo_name}/finetune-operator", "-o", "yaml")
        assert found.returncode == 0, found.stderr
        assert yaml.safe_load(found.stdout)[0]["version"] == chart["version"]
        pulled = helm(
            "pull", f"{repo_name}/finetune-operator", "--untar", "--destination", str(tmp_path)
        )
        assert pulled.returncode == 0, pulled.stderr
        shipped = tmp_path / "finetune-operator"
        assert (shipped / "README.md").read_text() == (CHART / "README.md").read_text()
        assert (shipped / "values.schema.json").is_file() and (shipped / "crds").is_dir()
        crds = helm("show", "crds", f"{repo_name}/finetune-operator")
        assert crds.returncode == 0, crds.stderr
        shown = [doc for doc in yaml.safe_load_all(crds.stdout) if doc]
        assert shown == [yaml.safe_load((CHART / "crds" / "finetunejob.yaml").read_text())]
        rendered = helm("template", "ftop", f"{repo_name}/finetune-operator", "-n", NAMESPACE)
        assert rendered.returncode == 0, rendered.stderr
        assert "kind: Deployment" in rendered.stdout
    finally:
        helm("repo", "remove", repo_name)


def test_artifacthub_annotations_match_the_chart() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    notes = chart["annotations"]
    images = {i["name"]: i["image"] for i in yaml.safe_load(notes["artifacthub.io/images"])}
    app = chart["appVersion"]
    assert images == {
        "finetune-operator": f"{values['image']['repository']}:{app}",
        "finetune-runtime": f"{values['runtimeImage']['repository']}:{app}",
    }
    (example,) = yaml.safe_load(notes["artifacthub.io/crdsExamples"])
    assert example == yaml.safe_load((REPO / "examples" / "finetune-tiny-cpu.yaml").read_text())
    crd = yaml.safe_load((CHART / "crds" / "finetunejob.yaml").read_text())
    (listed,) = yaml.safe_load(notes["artifacthub.io/crds"])
    assert listed["name"] == crd["metadata"]["name"]
    assert listed["version"] in [v["name"] for v in crd["spec"]["versions"]]
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'license = {{ text = "{notes["artifacthub.io/license"]}" }}' in pyproject


def test_readme_values_table_is_generated_and_current() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_values_table_has_a_described_row_for_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([^`]+)` \| [^|]+ \| `(.*?)` \| .+ \|$", readme, re.M))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert rows["metrics.port"] == "8080" and rows["rbac.scope"] == '"cluster"'

    def covered(prefix: str, mapping: dict[str, Any]) -> None:
        for key, value in mapping.items():
            path = prefix + key
            if path not in rows:
                assert isinstance(value, dict) and value, f"{path} has no row in the table"
                covered(path + ".", value)

    covered("", values)


def test_values_table_script_refuses_an_undocumented_value(tmp_path: Path) -> None:
    chart = tmp_path / "chart"
    chart.mkdir()
    for name in ("values.schema.json", "README.md"):
        (chart / name).write_text((CHART / name).read_text())
    (chart / "values.yaml").write_text(
        (CHART / "values.yaml").read_text() + "\nnewKnob: 3\n"
    )  # no `# --` comment
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--chart", str(chart)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "values without a description" in result.stderr and "newKnob" in result.stderr


def notes(helm: Helm, *sets: str) -> str:
    flags = [arg for item in sets for arg in ("--set", item)]
    result = helm(
        "install", "ftop", str(CHART), "-n", NAMESPACE, "--dry-run=client", *flags
    )  # client dry-run renders NOTES without a cluster
    assert result.returncode == 0, result.stderr
    return result.stdout.split("NOTES:", 1)[1]


@pytest.mark.parametrize(
    "sets",
    [[], ["rbac.scope=namespace", "watchNamespaces={team-a}"], ["metrics.service.enabled=false"]],
    ids=["default", "namespaced", "no-metrics"],
)
def test_notes_name_what_the_chart_creates(helm: Helm, render: Render, sets: list[str]) -> None:
    text = notes(helm, *sets)
    objects = render(sets=sets)
    (deployment,) = by_kind(objects, "Deployment")
    assert f"-n {NAMESPACE} rollout status deploy/{deployment['metadata']['name']}" in text
    crd = by_kind(objects, "CustomResourceDefinition")[0]
    assert f"kubectl get crd {crd['metadata']['name']}" in text
    services = {s["metadata"]["name"] for s in by_kind(objects, "Service")}
    forwarded = re.findall(r"port-forward svc/(\S+) (\d+)", text)
    assert {name for name, _ in forwarded} == services
    example = yaml.safe_load((REPO / "examples" / "finetune-tiny-cpu.yaml").read_text())
    assert f"ftj/{example['metadata']['name']} " in text
    if "watchNamespaces={team-a}" in sets:
        assert "in: team-a." in text and "kubectl apply -n team-a -f" in text
    else:
        assert "in all namespaces" in text and "kubectl get ftj -A -w" in text
    assert "kubectl delete ftj --all -A --wait" in text
