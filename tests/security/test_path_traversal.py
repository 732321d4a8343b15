"""Path traversal: object keys from S3 and output paths from configs stay where pointed.

Property tests over keys and paths built from hostile segments ('..', '.', empty,
absolute, backslashes, NUL, encoded dots): a key either maps to a file strictly inside
the fetch destination or is refused with a FetchError; an output_dir with a '..'
component (or a NUL) is refused with a ConfigError naming the field.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finetune_runtime.config import parse_config
from finetune_runtime.errors import ConfigError, FetchError
from finetune_runtime.storage.fetch_cache import Layout
from finetune_runtime.storage.s3 import RemoteObject, S3Location

SEGMENTS = st.sampled_from(
    ["..", ".", "", "a", "b c", "..a", "a..", "...", "\\..", "..\\..", "~", "%2e%2e", "\x00", "é"]
)
PATHS = st.lists(SEGMENTS, min_size=1, max_size=6).map("/".join)
SETTINGS = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@SETTINGS
@given(rel=PATHS, lead=st.sampled_from(["", "/", "//"]))
def test_object_keys_never_land_outside_the_destination(
    tmp_path: Path, rel: str, lead: str
) -> None:
    root = tmp_path / "dest"
    prefix = "data/"
    key = prefix + lead + rel
    obj = RemoteObject(key=key, size=1, etag='"x"')
    try:
        layout = Layout.for_fetch(S3Location("bkt", prefix), root, [obj], single=False)
        local = layout.local_path(key)
    except FetchError as exc:
        assert "refusing to fetch" in str(exc)
        return
    resolved = Path(os.path.normpath(local))
    assert resolved != root and root in resolved.parents, (key, local)
    assert "\x00" not in str(local), "a NUL byte cannot name a local file"


@SETTINGS
@given(rel=PATHS)
def test_a_single_object_lands_under_its_own_name(tmp_path: Path, rel: str) -> None:
    key = "models/" + rel
    obj = RemoteObject(key=key, size=1, etag='"x"')
    try:
        layout = Layout.for_fetch(S3Location("bkt", key), str(tmp_path) + "/", [obj], True)
    except FetchError:
        return
    assert layout.root.parent == tmp_path and layout.root.name not in ("", ".", "..")
    assert "\x00" not in layout.root.name


@SETTINGS
@given(path=PATHS, lead=st.sampled_from(["", "/", "./", "C:\\"]))
def test_output_dir_with_parent_components_is_refused(path: str, lead: str) -> None:
    value = lead + path
    text = {"base_model": "builtin:tiny-llama", "datasets": [{"path": "a.jsonl"}]}
    try:
        config = parse_config({**text, "output_dir": value}, "job.yaml")
    except ConfigError as exc:
        assert any(issue.field == "output_dir" for issue in exc.issues), str(exc)
        return
    parts = PurePosixPath(config.output_dir.replace("\\", "/")).parts
    assert ".." not in parts and "\x00" not in config.output_dir and config.output_dir.strip()


@pytest.mark.parametrize("value", ["../out", "a/../../b", "a\\..\\b", "out/..", "x\x00y", " "])
def test_known_traversals_are_named(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {"base_model": "m", "datasets": [{"path": "a.jsonl"}], "output_dir": value}, "job.yaml"
        )
    assert "output_dir" in str(info.value)
