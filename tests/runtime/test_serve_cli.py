"""`finetune serve` as users run it: the CLI process, what it serves, its one-line errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from serve_fixtures import Trained
from train_helpers import free_port

from finetune_runtime.cli import main as cli_main
from finetune_runtime.commands.serve import api_key
from finetune_runtime.errors import ConfigError
from finetune_runtime.serving.loading import resolve_source
from finetune_runtime.serving.text import TextStream


@pytest.mark.slow
def test_cli_serves_the_merged_model_to_the_openai_client(trained_run: Trained) -> None:
    port = free_port()
    env = dict(os.environ, FINETUNE_SERVE_API_KEY="tok-123")
    proc = subprocess.Popen(
        [sys.executable, "-m", "finetune_runtime.cli", "serve", str(trained_run.merged),
         "--port", str(port), "--served-model-name", "demo"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "finetune serve never became ready"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="tok-123", max_retries=0)
        out = client.completions.create(model="demo", prompt="hello", max_tokens=5, temperature=0)
        assert out.model == "demo" and out.usage is not None
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_config_target_serves_merged_then_adapter(trained_run: Trained, tmp_path: Path) -> None:
    source = resolve_source(str(trained_run.config_path))
    assert Path(source.base) == trained_run.merged and source.adapters == {}
    assert source.base_name == trained_run.output_dir.name
    # the same outputs without merged/: the adapter on base_model
    copy = tmp_path / "copy"
    shutil.copytree(trained_run.output_dir / "adapter", copy / "out" / "adapter")
    config = trained_run.config_path.read_text().replace(
        str(trained_run.output_dir), str(copy / "out")
    )
    (copy / "config.yaml").write_text(config)
    source = resolve_source(str(copy / "config.yaml"))
    assert source.adapters == {"out": copy / "out" / "adapter"}
    assert (Path(source.base) / "config.json").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "/no/such/dir"], "no such model directory or training config"),
        (["serve", "{tmp}"], "neither a model directory"),
        (["serve", "{model}", "--adapter", "x"], "expected NAME=DIR"),
        (["serve", "{model}", "--adapter", "../up={tmp}"], "has no adapter_config.json"),
        (["serve", "{model}", "--served-model-name", "../etc"], "--served-model-name '../etc'"),
        (["serve", "{model}", "--max-queue", "0"], "--max-queue: must be at least 1"),
        (["serve", "{model}", "--api-key-file", "/no/key"], "--api-key-file /no/key"),
    ],
)
def test_cli_errors_are_one_line(
    argv: list[str], message: str, tmp_path: Path, tiny_model_dir: Path, capsys
) -> None:
    argv = [a.format(tmp=tmp_path, model=tiny_model_dir) for a in argv]
    code = cli_main(argv)
    err = capsys.readouterr().err.strip()
    assert code == ConfigError.exit_code or code == 4, err
    assert message in err and len(err.splitlines()) == 1, err


def test_api_key_sources(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("from-file\n")
    assert api_key(str(key), {"FINETUNE_SERVE_API_KEY": "from-env"}) == "from-file"
    assert api_key(None, {"FINETUNE_SERVE_API_KEY": " from-env "}) == "from-env"
    assert api_key(None, {}) is None
    key.write_text("  \n")
    with pytest.raises(ConfigError, match="empty"):
        api_key(str(key), {})


class _Chars:
    """A tokenizer whose tokens are characters, to drive TextStream exactly."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)


def test_text_stream_holds_back_partial_stops() -> None:
    stream = TextStream(_Chars(), ["END"])
    got = [stream.push(ord(c)) for c in "abEN"]
    assert got == ["a", "b", "", ""]  # "EN" might become "END"
    assert stream.push(ord("X")) == "ENX"
    assert [stream.push(ord(c)) for c in "yEND"] == ["y", "", "", ""]
    assert stream.stopped and stream.text == "abENXy"
    tail = TextStream(_Chars(), ["END"])
    for c in "okE":
        tail.push(ord(c))
    assert tail.finish() == "E"  # the sequence ended: release what was held
