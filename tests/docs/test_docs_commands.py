"""Every command the docs show either runs here or is on a justified skip-list.

Commands of one doc file run in order in one scratch directory (so `finetune init -o x.yaml`
then `finetune validate x.yaml` works), with the repository's top-level folders linked in so
relative paths like `charts/finetune-operator` resolve. What runs:

- `finetune init|validate` as written; `finetune launch` with `--dry-run` added (it parses its
  flags and the config and prints the torchrun command, without training);
- `helm show|template|lint|package` as written; `helm install|upgrade` as `helm template` with
  the same name, chart and values (install-only flags dropped): that is what helm checks before
  it talks to a cluster;
- `kubectl apply` as a server-side dry run and `kubectl get crd`, against the real control
  plane (tests/kubeharness: kube-apiserver with the FineTuneJob CRD applied);
- usage lines (`finetune validate CONFIG [--json]`): every flag they name must be a flag of the
  real argument parser, and a number shown beside a flag must be its default.

Anything else must match a SKIP rule saying why it cannot run here; a rule that matches
nothing, or matches a command that runs, fails the test, so the list cannot go stale.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from doc_commands import REPO, DocCommand, all_commands, commands_in, doc_files
from helm_binary import find_tools

from finetune_runtime.cli import build_parser, main
from finetune_runtime.config.presets import render_preset


@dataclass(frozen=True)
class Skip:
    pattern: str  # matched (re.search) against one simple command, e.g. "kubectl get ftj -w"
    reason: str
    evidence: str = ""  # a test file that runs the same thing another way, if any


SKIP = [
    Skip(
        r"^kubectl (-n \S+ )?(get ftj|wait|describe ftj|logs)",
        "follows a live FineTuneJob: needs the operator image running a job on a node",
    ),
    Skip(
        r"^kubectl -n \S+ rollout status",
        "waits for the operator's pod to run: needs the image on a node",
    ),
    Skip(
        r"^kubectl delete ",
        "tears down a whole installation (every FineTuneJob, the CRD), which other tests share",
    ),
    Skip(r"^kubectl -n argocd ", "needs Argo CD installed in the cluster"),
    Skip(r"^kubectl apply -f job\.yaml", "applies a job file the reader wrote (not in the repo)"),
    Skip(r"^kubectl --context kind-", "the kind cluster of `make e2e-kind` (needs Docker)"),
    Skip(
        r"^helm uninstall ",
        "removes the release the doc's `helm install` made, which runs here only as helm template",
    ),
    Skip(
        r"^finetune fetch s3://",
        "needs the S3 bucket and objects the doc names; fetch runs against a moto S3 server",
        "tests/runtime/test_fetch.py",
    ),
    Skip(
        r"^finetune (train|merge|run|generate|serve) my\.yaml",
        "trains the tiny preset (or uses what it trained): minutes on 2 shared cores; "
        "`finetune run` of the tiny preset (train, merge, generate) runs in the demo test",
        "tests/runtime/test_demo.py",
    ),
]

# Files a doc assumes the reader already has, created in the scratch directory first.
GIVEN = {
    "docs/distributed.md": {"cfg.yaml": "tiny preset (the page trains the tiny model)"},
    "docs/install.md": {"my-values.yaml": "the user's own values: {}"},
    "charts/finetune-operator/README.md": {"my-values.yaml": "the user's own values: {}"},
}
HELM_INSTALL_ONLY = {"--create-namespace", "--wait", "--atomic", "--reuse-values", "--install"}


def subcommand_parser(program: str, words: list[str]) -> argparse.ArgumentParser:
    if program == "finetune-operator":
        from finetune_operator.main import build_parser as operator_parser

        return operator_parser()
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[words[1]]


def check_synopsis(command: DocCommand) -> None:
    words = command.text.split()
    parser = subcommand_parser(words[0], words)
    known = {s for action in parser._actions for s in action.option_strings}
    unknown = {flag for flag in command.flags() if flag != "--"} - known
    assert not unknown, f"{command.where}: {sorted(unknown)} are not flags of `{words[0]}`"
    defaults = {s: a.default for a in parser._actions for s in a.option_strings}
    for flag, shown in re.findall(r"\[(--[\w-]+) ([0-9][0-9.]*)\]", command.text):
        default = defaults[flag]
        same = float(shown) == default if isinstance(default, int | float) else shown == default
        assert same, f"{command.where}: shows `{flag} {shown}`; its default is {defaults[flag]}"


def run_finetune(argv: list[str], cwd: Path, capsys: pytest.CaptureFixture[str]) -> str:
    if argv[1] == "launch":
        split = argv.index("--") if "--" in argv else len(argv)
        argv = [*argv[:split], "--dry-run", *argv[split:]]
    before = Path.cwd()
    os.chdir(cwd)
    try:
        code = main(argv[1:])
    finally:
        os.chdir(before)
    out = capsys.readouterr()
    assert code == 0, f"`{shlex.join(argv)}` exited {code}:\n{out.out}\n{out.err}"
    return out.out


def run_helm(argv: list[str], cwd: Path) -> str | None:
    """Run a helm command that needs no cluster; None when it needs one."""
    verb = argv[1]
    if verb in ("install", "upgrade"):
        argv = ["helm", "template", *[a for a in argv[2:] if a not in HELM_INSTALL_ONLY]]
    elif verb not in ("show", "template", "lint", "package"):
        return None
    home = cwd / ".helm-home"
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "HELM_CACHE_HOME": str(home / "cache")}
    result = subprocess.run(
        [str(find_tools().helm), *argv[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"`{shlex.join(argv)}` failed:\n{result.stderr}"
    return result.stdout


def runs_here(argv: list[str]) -> bool:
    if argv[0] == "finetune":
        return argv[1] in ("init", "validate", "launch") and not argv[-1].startswith("s3://")
    if argv[0] == "helm":
        return argv[1] in ("install", "upgrade", "show", "template", "lint", "package")
    if argv[0] == "kubectl":
        files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-f"]
        applies = argv[1] == "apply" and all(f == "-" or (REPO / f).exists() for f in files)
        return applies or argv[1:3] == ["get", "crd"]
    return False


def run_kubectl(argv: list[str], cwd: Path, kubeconfig: Path, stdin: str) -> str:
    """`kubectl apply` as a server-side dry run (the apiserver validates against the CRD and
    its admission rules, nothing is stored); `kubectl get crd` as written."""
    kubectl = [str(find_tools().kubectl), "--kubeconfig", str(kubeconfig)]
    if argv[1] == "apply":
        argv = [*argv, "--dry-run=server"]
        # Given: the namespaces the applied files name exist (e.g. `ml` in examples/).
        files = [cwd / argv[i + 1] for i, a in enumerate(argv) if a == "-f" and argv[i + 1] != "-"]
        docs = [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]
        for namespace in {d["metadata"].get("namespace") for d in docs} - {None}:
            manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
            subprocess.run(
                [*kubectl, "apply", "-f", "-"], input=yaml.safe_dump(manifest), check=True,
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
    result = subprocess.run(
        [*kubectl, *argv[1:]],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"`{shlex.join(argv)}` failed:\n{result.stderr}"
    return result.stdout


def skip_rule(argv: list[str]) -> Skip | None:
    text = shlex.join(argv)
    return next((rule for rule in SKIP if re.search(rule.pattern, text)), None)


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    for entry in REPO.iterdir():
        if entry.is_dir() and not entry.name.startswith("."):
            (tmp_path / entry.name).symlink_to(entry)
    yield tmp_path


def _given(path: str, scratch: Path) -> None:
    for name in GIVEN.get(path, {}):
        text = render_preset("tiny") if name.endswith("cfg.yaml") else "{}\n"
        (scratch / name).write_text(text, encoding="utf-8")


def _needs_control_plane(doc: Path) -> bool:
    return any(
        argv[0] == "kubectl" and runs_here(argv)
        for command in commands_in(doc)
        if not command.synopsis
        for argv in command.pipeline()
    )


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param(
            doc,
            id=str(doc.relative_to(REPO)),
            marks=[pytest.mark.slow] if _needs_control_plane(doc) else [],
        )
        for doc in doc_files()
        if commands_in(doc)
    ],
)
def test_doc_commands_run(
    doc: Path, scratch: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    """kubectl commands run against the real control plane (tests/kubeharness), CRD applied."""
    commands = commands_in(doc)
    _given(str(doc.relative_to(REPO)), scratch)
    for command in commands:
        if command.synopsis:
            check_synopsis(command)
            continue
        piped = ""
        for argv in command.pipeline():
            if not runs_here(argv):
                assert skip_rule(argv), (
                    f"{command.where}: `{shlex.join(argv)}` neither runs here nor matches a "
                    "SKIP rule in tests/docs/test_docs_commands.py: make it runnable or add a "
                    "rule that says why it cannot run here"
                )
                piped = ""
            elif argv[0] == "finetune":
                piped = run_finetune(argv, scratch, capsys)
            elif argv[0] == "helm":
                piped = run_helm(argv, scratch) or ""
            else:
                kubeconfig = request.getfixturevalue("cluster").kubeconfig
                piped = run_kubectl(argv, scratch, kubeconfig, piped)


def test_skip_list_is_current() -> None:
    """Every rule still skips some command, none skips a command that runs, evidence exists."""
    simple = [argv for c in all_commands() if not c.synopsis for argv in c.pipeline()]
    for rule in SKIP:
        matched = [argv for argv in simple if re.search(rule.pattern, shlex.join(argv))]
        assert matched, f"SKIP rule {rule.pattern!r} matches no command in the docs: remove it"
        runnable = [shlex.join(argv) for argv in matched if runs_here(argv)]
        assert not runnable, f"SKIP rule {rule.pattern!r} matches commands that run: {runnable}"
        assert not rule.evidence or (REPO / rule.evidence).is_file(), rule.evidence
    for path, files in GIVEN.items():
        assert commands_in(REPO / path), f"GIVEN names {path}, which shows no commands"
        assert files


def test_extraction_finds_commands_synopses_and_continuations(tmp_path: Path) -> None:
    probe = tmp_path / "probe.md"
    probe.write_text(
        "```sh\n$ helm install a charts/x \\\n  --set b=c   # note\nkubectl get ftj -w\n```\n"
        "```\nfinetune validate CONFIG [--json]\n               [--check-data]\n```\n"
        "not code: finetune train x.yaml\n"
    )
    found = commands_in(probe, root=tmp_path)
    assert [(c.line, c.text, c.synopsis) for c in found] == [
        (2, "helm install a charts/x --set b=c   # note", False),
        (4, "kubectl get ftj -w", False),
        (7, "finetune validate CONFIG [--json] [--check-data]", True),
    ]
    assert found[0].pipeline() == [["helm", "install", "a", "charts/x", "--set", "b=c"]]
