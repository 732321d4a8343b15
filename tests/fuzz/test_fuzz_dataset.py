"""Fuzzing the dataset readers and the row formats: a row, or a DatasetError at file:line.

Inputs: JSONL and JSON-array files assembled from valid rows, malformed fragments,
blank lines, CRLF, BOMs, invalid UTF-8, Unicode line separators inside strings, deep
nesting and huge numbers; rows of random shape through every format (alpaca, custom,
completion, sharegpt with each bundled chat template).

Properties:
- `read_rows` returns the rows, each at the line where it is written (counting only
  '\\n' as a line break, as editors and `wc -l` do), or raises DatasetError naming the
  file and a line that exists;
- one bad line among good ones is reported at exactly that line;
- a row either yields text segments (trained and masked, rendering the whole row) or
  a DatasetError naming the file, the line, the field and the format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fuzz_strategies import ANY, TEXT, fuzz_settings
from hypothesis import example, given
from hypothesis import strategies as st

from finetune_runtime.config import DatasetSettings
from finetune_runtime.data.encode import _segments
from finetune_runtime.data.formats import FormatContext, Renderer, check_settings
from finetune_runtime.data.readers import Row, read_rows
from finetune_runtime.data.templates import BUNDLED
from finetune_runtime.errors import DatasetError

JSON_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20
) | st.sampled_from(["\u2028", "a\u2029b", "\x85", "\r", "\x0b\x0c", "\ufeff", "🙂", ""])
ROW_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), JSON_TEXT),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(JSON_TEXT, inner, max_size=3)
    ),
    max_leaves=6,
)
ROWS = st.one_of(
    st.fixed_dictionaries(
        {"instruction": JSON_TEXT, "output": JSON_TEXT}, optional={"input": JSON_TEXT}
    ),
    st.dictionaries(JSON_TEXT, ROW_VALUES, max_size=4),
    ROW_VALUES,
)
MALFORMED = st.sampled_from(
    [
        "{",
        "}",
        '{"a": }',
        '{"a": 1,}',
        "{'a': 1}",
        '{"a": 1} {"b": 2}',
        '{"a": "unterminated}',
        '{"a": tru}',
        "[" * 5000,
        "[" * 3000 + "]" * 3000,
        '{"a": ' + "9" * 5000 + "}",
        '{"a": 1e999999}x',
        "\x00",
        '"\\ud800"x',
    ]
)


def lines_of(raw: bytes) -> int:
    return raw.count(b"\n") + 1


def check_dataset_error(exc: DatasetError, shown: str, raw: bytes) -> None:
    assert exc.path == shown
    text = str(exc)
    assert text.startswith(shown)
    assert text[len(shown) :].strip(": ").strip(), "the error says what is wrong"
    if exc.line is not None:
        assert 1 <= exc.line <= lines_of(raw), (exc.line, lines_of(raw))
        assert text.startswith(f"{shown}:{exc.line}: ")


def read(tmp: Path, name: str, raw: bytes) -> list[Row] | DatasetError:
    path = tmp / name
    path.write_bytes(raw)
    try:
        rows = read_rows(path, f"data/{name}")
    except DatasetError as exc:
        check_dataset_error(exc, f"data/{name}", raw)
        return exc
    for row in rows:
        assert 1 <= row.line <= lines_of(raw)
    return rows


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-data")


# ----------------------------------------------------------------------------- readers


@fuzz_settings(200)
@given(
    lines=st.lists(
        st.one_of(
            ROWS.map(lambda r: json.dumps(r, ensure_ascii=False)),
            ROWS.map(json.dumps),
            MALFORMED,
            st.sampled_from(["", "   ", "\t"]),
            st.text(max_size=30),
        ),
        max_size=8,
    ),
    newline=st.sampled_from(["\n", "\r\n"]),
    bom=st.booleans(),
    junk=st.one_of(st.just(b""), st.binary(max_size=4)),
    suffix=st.sampled_from([".jsonl", ".json"]),
)
def test_any_file_gives_rows_or_an_error_at_a_real_line(
    tmp: Path, lines: list[str], newline: str, bom: bool, junk: bytes, suffix: str
) -> None:
    raw = (b"\xef\xbb\xbf" if bom else b"") + newline.join(lines).encode() + junk
    read(tmp, "any" + suffix, raw)


@fuzz_settings(150)
@given(
    rows=st.lists(st.tuples(ROWS, st.integers(0, 2)), min_size=1, max_size=6),
    bad=st.one_of(st.none(), st.tuples(st.integers(0, 5), MALFORMED)),
    ascii_only=st.booleans(),
    bom=st.booleans(),
)
@example(rows=[({"text": "a\u2028b"}, 0), ({"text": "c"}, 0)], bad=None, ascii_only=False, bom=0)
@example(rows=[({"a": 1}, 0)], bad=(1, "[" * 5000), ascii_only=True, bom=False)
@example(rows=[({"a": 1}, 1)], bad=(0, '{"a": ' + "9" * 5000 + "}"), ascii_only=True, bom=True)
def test_jsonl_rows_keep_their_lines_and_a_bad_line_is_named(
    tmp: Path,
    rows: list[tuple[Any, int]],
    bad: tuple[int, str] | None,
    ascii_only: bool,
    bom: bool,
) -> None:
    """JSON Lines written by json.dumps (raw U+2028 and friends inside strings when not
    ASCII-escaped), blank lines between them; optionally one malformed line."""
    text_lines: list[str] = []
    expected: list[tuple[int, Any]] = []
    bad_line = None
    for i, (row, blanks) in enumerate(rows):
        if bad is not None and bad[0] == i:
            text_lines.append(bad[1])
            bad_line = len(text_lines)
        text_lines.extend([""] * blanks)
        text_lines.append(json.dumps(row, ensure_ascii=ascii_only))
        expected.append((len(text_lines), row))
    raw = (b"\xef\xbb\xbf" if bom else b"") + "\n".join(text_lines).encode() + b"\n"
    result = read(tmp, "rows.jsonl", raw)
    if bad_line is None:
        assert not isinstance(result, DatasetError), str(result)
        assert [(r.line, r.data) for r in result] == expected
    else:
        assert isinstance(result, DatasetError)
        assert result.line == bad_line, str(result)


@fuzz_settings(60)
@given(
    rows=st.lists(ROWS, min_size=1, max_size=5),
    indent=st.sampled_from([None, 0, 2]),
    bad_byte=st.one_of(st.none(), st.integers(0, 10_000)),
    bom=st.booleans(),
)
def test_json_arrays_and_invalid_utf8(
    tmp: Path, rows: list[Any], indent: int | None, bad_byte: int | None, bom: bool
) -> None:
    body = json.dumps(rows, indent=indent, ensure_ascii=False).encode()
    start = 3 if bom else 0
    raw = (b"\xef\xbb\xbf" if bom else b"") + body
    if bad_byte is not None:
        at = start + bad_byte % len(body)
        while at < len(raw) and 0x80 <= raw[at] <= 0xBF:
            at += 1  # between characters: inside one, the lead byte would be the bad one
        raw = raw[:at] + b"\xff" + raw[at:]
    result = read(tmp, "rows.json", raw)
    if bad_byte is None:
        assert not isinstance(result, DatasetError), str(result)
        assert [r.data for r in result] == rows
    else:
        assert isinstance(result, DatasetError)
        assert "0xff" in str(result) and result.line == raw.count(b"\n", 0, at) + 1


# ----------------------------------------------------------------------------- formats

SETTINGS = [
    DatasetSettings(path="d.jsonl", format="alpaca"),
    DatasetSettings(path="d.jsonl", format="alpaca", field_system="sys", system_prompt="S"),
    DatasetSettings(path="d.jsonl", format="completion"),
    DatasetSettings(path="d.jsonl", format="completion", field_text="content"),
    DatasetSettings(
        path="d.jsonl",
        format="custom",
        prompt_format="{system}: {instruction} / {input}\n",
        no_input_format="{instruction}\n",
        field_output="answer",
    ),
]
CHAT_SETTINGS = [
    DatasetSettings(path="d.jsonl", format="sharegpt"),
    DatasetSettings(path="d.jsonl", format="sharegpt", roles_to_train=["user", "assistant"]),
    DatasetSettings(path="d.jsonl", format="alpaca", prompt_style="chat"),
    DatasetSettings(
        path="d.jsonl", format="sharegpt", field_messages="msgs", role_field="r", content_field="c"
    ),
]
ROLES = st.sampled_from(["system", "human", "user", "gpt", "assistant", "model", "bot", " USER "])
TURNS = st.lists(
    st.one_of(
        st.fixed_dictionaries({"from": ROLES, "value": JSON_TEXT}),
        st.fixed_dictionaries({"role": ROLES, "content": JSON_TEXT}),
        st.fixed_dictionaries({"r": ROLES, "c": JSON_TEXT}),
        st.dictionaries(st.sampled_from(["from", "role", "value", "content"]), ANY, max_size=3),
        ANY,
    ),
    max_size=5,
)
FORMAT_ROWS = st.one_of(
    ROWS,
    st.dictionaries(
        st.sampled_from(
            ["instruction", "input", "output", "text", "content", "answer", "sys", "system"]
        ),
        st.one_of(JSON_TEXT, ANY),
        max_size=5,
    ),
    st.fixed_dictionaries(
        {}, optional={"conversations": TURNS, "messages": TURNS, "msgs": TURNS, "x": TEXT}
    ),
)


def check_row(row_data: Any, ctx: FormatContext) -> None:
    row = Row(row_data, line=7, index=3, label="line 7")
    try:
        segments = _segments("data/d.jsonl", row, ctx)
    except DatasetError as exc:
        text = str(exc)
        assert exc.path == "data/d.jsonl" and exc.line == 7
        assert text.startswith("data/d.jsonl:7: ")
        assert f"(format {ctx.settings.format})" in text
        return
    assert segments and all(isinstance(seg.text, str) for seg in segments)
    assert any(seg.train for seg in segments), "every kept row trains on something"


@fuzz_settings(200)
@given(row=FORMAT_ROWS, which=st.integers(0, len(SETTINGS) - 1), train_inputs=st.booleans())
def test_rows_of_any_shape_in_plain_formats(row: Any, which: int, train_inputs: bool) -> None:
    check_row(row, FormatContext(SETTINGS[which], train_inputs))


@fuzz_settings(120, deadline_ms=5000)
@given(
    row=FORMAT_ROWS,
    which=st.integers(0, len(CHAT_SETTINGS) - 1),
    template=st.sampled_from(sorted(BUNDLED)),
    train_inputs=st.booleans(),
)
def test_rows_of_any_shape_in_chat_formats(
    row: Any, which: int, template: str, train_inputs: bool
) -> None:
    renderer = Renderer(BUNDLED[template], template, {"bos_token": "<s>", "eos_token": "</s>"})
    check_row(row, FormatContext(CHAT_SETTINGS[which], train_inputs, renderer))


TEMPLATE_TOKENS = st.sampled_from(
    ["{instruction}", "{input}", "{system}", "{", "}", "{{", "}}", ":", "!r", "!x", ">9", "d"]
    + ["{0}", "{}", "{instruction", "[0]", ".x", "\n", "Q: ", "A: ", "é"]
)


@fuzz_settings(200)
@given(
    prompt=st.lists(TEMPLATE_TOKENS, max_size=8).map("".join),
    no_input=st.one_of(st.none(), st.lists(TEMPLATE_TOKENS, max_size=6).map("".join)),
    row=FORMAT_ROWS,
)
@example(
    prompt="{instruction:>99999999999}", no_input=None, row={"instruction": "i", "output": "o"}
)
@example(prompt="{instruction:{input}}", no_input=None, row={"instruction": "i", "output": "o"})
@example(prompt="{instruction!x}", no_input=None, row={"instruction": "i", "output": "o"})
def test_custom_prompt_templates(prompt: str, no_input: str | None, row: Any) -> None:
    """A custom format is refused up front (config-level DatasetError) or renders any row
    (or names the row's bad field): a template never fails, or runs away, per row."""
    settings = DatasetSettings(
        path="d.jsonl", format="custom", prompt_format=prompt or None, no_input_format=no_input
    )
    try:
        check_settings(settings, "datasets[0]")
    except DatasetError as exc:
        assert str(exc).startswith("datasets[0].") and "_format" in str(exc)
        return
    check_row(row, FormatContext(settings, False))
