"""Dataset formats as plugins: the `finetune.formats` entry point group.

The worked example (examples/finetune-format-qa) is really installed with pip, into a
temporary target folder put on PYTHONPATH for the `finetune` processes (the shared
virtualenv is never changed), then validated and preprocessed; the prepared cache's
tokens and labels are decoded. Broken plugins are real distributions too: a
`*.dist-info` folder with an `entry_points.txt`, which is what importlib.metadata reads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from finetune_runtime.cli import main
from finetune_runtime.config import parse_config
from finetune_runtime.data import build_datasets, registry
from finetune_runtime.errors import DatasetError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "finetune-format-qa"


def test_the_builtins_are_entry_points_of_this_project() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    declared = project["project"]["entry-points"]["finetune.formats"]
    assert declared == registry.BUILTINS
    for name in declared:
        assert registry.interface_problem(registry.load(name)) is None
        entry = registry.origin_of(name)
        assert entry is not None and entry.builtin


# --------------------------------------------------------------------------- the example


@pytest.fixture(scope="module")
def qa_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/finetune-format-qa installed by pip into a folder of its own."""
    work = tmp_path_factory.mktemp("qa-plugin")
    source = work / "src"  # a copy: the build leaves build/ and *.egg-info behind
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("outputs", "build", "*.egg*"))
    site = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--no-index", "--target", str(site), str(source)],
        check=True,
        timeout=300,
    )
    return site


def finetune(site: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(site), str(ROOT / "runtime"), str(ROOT / "operator"), env.get("PYTHONPATH", "")]
    )
    return subprocess.run(
        [str(Path(sys.executable).with_name("finetune")), *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_example_plugin_validates_and_prepares_masked_examples(
    qa_site: Path, tmp_path: Path, tiny_tokenizer: Any
) -> None:
    shutil.copytree(EXAMPLE / "data", tmp_path / "data")
    text = (EXAMPLE / "finetune.yaml").read_text(encoding="utf-8")
    (tmp_path / "job.yaml").write_text(text.replace("./outputs/qa", str(tmp_path / "out")))

    checked = finetune(qa_site, "validate", "job.yaml", "--json", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    summary = json.loads(checked.stdout)["summary"]
    assert summary["datasets"][0]["format"] == "qa" and summary["datasets"][0]["rows"] == 8

    done = finetune(qa_site, "preprocess", "job.yaml", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["datasets"] == [{"path": "data/qa.jsonl", "format": "qa", "detected": False}]
    assert result["train_rows"] == 8

    from finetune_runtime.data.cache import MappedDataset, read_meta

    folder = Path(result["cache"])
    meta = read_meta(folder)
    assert meta["inputs"]["datasets"][0]["format_plugin"] == "finetune-format-qa 0.1.0"
    rows = [json.loads(line) for line in (tmp_path / "data" / "qa.jsonl").read_text().splitlines()]
    train = MappedDataset(folder, "train", packed=False)
    for i, row in enumerate(rows):
        example = train.example(i)
        ids, labels = example["input_ids"], example["labels"]
        trained = [t for t, label in zip(ids, labels, strict=True) if label != -100]
        assert trained == [label for label in labels if label != -100]
        first = labels.index(next(label for label in labels if label != -100))
        assert all(label != -100 for label in labels[first:]), "one trained span: the answer"
        prompt = tiny_tokenizer.decode(ids[:first], skip_special_tokens=True)
        context = f"Context: {row['context']}\n" if "context" in row else ""
        assert prompt == f"{context}Question: {row['question']}\nAnswer: "
        assert tiny_tokenizer.decode(trained) == row["answer"] + tiny_tokenizer.eos_token


def test_generation_prompts_are_rendered_by_the_plugin(
    qa_site: Path, monkeypatch: pytest.MonkeyPatch, tiny_tokenizer: Any
) -> None:
    from finetune_runtime.model.generate import prompt_ids

    monkeypatch.syspath_prepend(str(qa_site))
    registry.forget()
    try:
        config = config_with("qa", qa_site / "unused.jsonl")
        ids = prompt_ids(config, tiny_tokenizer, "Who wrote it?", "Ada wrote it.")
    finally:
        sys.modules.pop("finetune_format_qa", None)
        registry.forget()
    assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == (
        "Context: Ada wrote it.\nQuestion: Who wrote it?\nAnswer: "
    )


def test_without_the_plugin_validate_names_the_format_and_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(EXAMPLE / "data", tmp_path / "data")
    config = tmp_path / "job.yaml"
    config.write_text((EXAMPLE / "finetune.yaml").read_text(encoding="utf-8"))
    assert main(["validate", str(config), "--json"]) == 2
    issue = json.loads(capsys.readouterr().out)["issues"][0]
    assert (issue["field"], issue["line"]) == ("datasets[0].format", 6)
    assert "unknown format 'qa'" in issue["message"]
    assert "installed here: alpaca, completion, custom, sharegpt" in issue["message"]

    config.write_text(config.read_text().replace("format: qa", "format: alpacca"))
    assert main(["validate", str(config), "--json"]) == 2
    issue = json.loads(capsys.readouterr().out)["issues"][0]
    assert "unknown format 'alpacca' (did you mean 'alpaca'?)" in issue["message"]


# --------------------------------------------------------------------------- broken plugins

PLUGINS = """
from finetune_runtime.data.formats import Segment

class Crashes:
    def segments(self, row, ctx):
        return [Segment(row["prompt"], False), Segment(row["reply"], True)]

class ReturnsText:
    def segments(self, row, ctx):
        return "not segments"

class Upper:
    def segments(self, row, ctx):
        return [Segment(row["text"].upper(), True)]

    def check_settings(self, settings):
        return [("system_prompt", "upper takes no system prompt")] if settings.system_prompt else []

NO_SEGMENTS = object()
"""


def add_distribution(site: Path, name: str, entry_points: dict[str, str]) -> None:
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("[finetune.formats]\n" + "\n".join(lines) + "\n")


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path holding the module above and the distributions a test adds."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "fmt_plugins.py").write_text(PLUGINS)
    monkeypatch.syspath_prepend(str(site))
    registry.forget()
    yield site
    sys.modules.pop("fmt_plugins", None)
    registry.forget()


def config_with(fmt: str, data: Path, **dataset: Any) -> Any:
    return parse_config(
        {
            "base_model": "builtin:tiny-llama",
            "datasets": [{"path": str(data), "format": fmt, **dataset}],
            "training": {"sequence_len": 128},
        }
    )


def rows_file(tmp_path: Path, *rows: dict[str, Any]) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "fmt_missing:Thing",
            "cannot be loaded (entry point broken = 'fmt_missing:Thing' of "
            "finetune-format-broken 1.0): ModuleNotFoundError",
        ),
        (
            "fmt_plugins:Absent",
            "cannot be loaded (entry point broken = 'fmt_plugins:Absent' of "
            "finetune-format-broken 1.0): AttributeError",
        ),
        (
            "fmt_plugins:NO_SEGMENTS",
            "does not implement the format interface: it has no segments(row, ctx) method",
        ),
    ],
)
def test_a_plugin_that_cannot_load_is_named_with_its_distribution(
    plugin_site: Path, tmp_path: Path, tiny_tokenizer: Any, value: str, expected: str
) -> None:
    add_distribution(plugin_site, "finetune-format-broken", {"broken": value})
    data = rows_file(tmp_path, {"text": "hello"})
    with pytest.raises(DatasetError) as caught:
        build_datasets(config_with("broken", data), tiny_tokenizer, processes=1)
    assert str(caught.value).startswith("datasets[0].format: format 'broken' ")
    assert expected in str(caught.value)


def test_plugin_failures_at_a_row_name_the_file_line_and_plugin(
    plugin_site: Path, tmp_path: Path, tiny_tokenizer: Any
) -> None:
    add_distribution(
        plugin_site,
        "finetune-format-mine",
        {"crashes": "fmt_plugins:Crashes", "returns-text": "fmt_plugins:ReturnsText"},
    )
    data = rows_file(tmp_path, {"prompt": "a", "reply": "b"}, {"prompt": "c"})
    with pytest.raises(DatasetError) as caught:
        build_datasets(config_with("crashes", data), tiny_tokenizer, processes=1)
    assert (caught.value.path, caught.value.line) == (str(data), 2)
    assert "format 'crashes' (finetune-format-mine 1.0) failed: KeyError: 'reply'" in str(
        caught.value
    )
    with pytest.raises(DatasetError) as caught:
        build_datasets(config_with("returns-text", data), tiny_tokenizer, processes=1)
    assert caught.value.line == 1
    assert "returned a string, not a list of Segment" in str(caught.value)


def test_a_plugins_settings_check_runs_in_validate_and_the_pipeline(
    plugin_site: Path, tmp_path: Path, tiny_tokenizer: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    add_distribution(plugin_site, "finetune-format-upper", {"upper": "fmt_plugins:Upper"})
    data = rows_file(tmp_path, {"text": "shout"})
    bundle = build_datasets(config_with("upper", data), tiny_tokenizer, processes=1)
    assert tiny_tokenizer.decode(bundle.train[0]["input_ids"]) == "<s>SHOUT</s>"

    config = tmp_path / "job.yaml"
    config.write_text(
        textwrap.dedent(f"""\
            base_model: builtin:tiny-llama
            datasets:
              - path: {data}
                format: upper
                system_prompt: be loud
            """)
    )
    assert main(["validate", str(config), "--json"]) == 2
    issue = json.loads(capsys.readouterr().out)["issues"][0]
    assert (issue["field"], issue["line"]) == ("datasets[0].system_prompt", 5)
    assert issue["message"] == "upper takes no system prompt"
    with pytest.raises(DatasetError, match=r"^datasets\[0\].system_prompt: upper takes no"):
        build_datasets(
            config_with("upper", data, system_prompt="be loud"), tiny_tokenizer, processes=1
        )


def test_a_plugin_without_prompt_row_cannot_render_generation_prompts(
    plugin_site: Path, tiny_tokenizer: Any
) -> None:
    from finetune_runtime.model.generate import prompt_ids

    add_distribution(plugin_site, "finetune-format-upper", {"upper": "fmt_plugins:Upper"})
    with pytest.raises(DatasetError, match=r"format 'upper' \(finetune-format-upper 1.0\) "):
        prompt_ids(config_with("upper", plugin_site / "unused.jsonl"), tiny_tokenizer, "hi")


def test_one_name_from_two_distributions_is_refused_naming_both(
    plugin_site: Path, tmp_path: Path, tiny_tokenizer: Any
) -> None:
    add_distribution(plugin_site, "finetune-format-a", {"upper": "fmt_plugins:Upper"})
    add_distribution(plugin_site, "finetune-format-b", {"upper": "fmt_plugins:Crashes"})
    data = rows_file(tmp_path, {"text": "x"})
    with pytest.raises(DatasetError) as caught:
        build_datasets(config_with("upper", data), tiny_tokenizer, processes=1)
    message = str(caught.value)
    assert "format 'upper' is registered more than once" in message
    assert "finetune-format-a 1.0" in message and "finetune-format-b 1.0" in message


def test_axolotl_type_names_an_installed_plugin(plugin_site: Path) -> None:
    add_distribution(plugin_site, "finetune-format-upper", {"upper": "fmt_plugins:Upper"})
    config = parse_config(
        {"base_model": "m", "micro_batch_size": 1, "datasets": [{"path": "a", "type": "upper"}]}
    )
    assert config.datasets[0].format == "upper"


def test_the_operators_config_check_accepts_any_well_formed_format_name() -> None:
    """The operator's image does not carry the trainer image's plugins: it checks spelling."""
    from finetune_operator.spec import SpecError, validate_job

    dataset: dict[str, Any] = {"path": "s3://bucket/qa.jsonl", "format": "qa"}
    body = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "qa", "namespace": "ml"},
        "spec": {"config": {"base_model": "builtin:tiny-llama", "datasets": [dataset]}},
    }
    assert validate_job(body).config.datasets[0].format == "qa"
    dataset["format"] = "q&a"
    with pytest.raises(SpecError, match=r"spec\.config: datasets\[0\]\.format: 'q&a' is not a"):
        validate_job(body)
