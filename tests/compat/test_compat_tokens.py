"""Token-exact compatibility: the same axolotl YAML through axolotl's preprocess and ours.

For every case of bench.vs_axolotl.cases, axolotl (its own venv, its preprocess CLI)
writes its prepared dataset; our pipeline tokenizes the same YAML and data. input_ids
and labels must be equal row for row; with sample_packing, the same examples and masks,
order aside (axolotl packs at training time, ours up front, so our packed rows are also
unpacked at the position-id restarts and compared).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.vs_axolotl import venv
from bench.vs_axolotl.cases import CASES, Case, write_case
from bench.vs_axolotl.compare import Rules, rows_equal, same_examples, unpack
from bench.vs_axolotl.ours import tokenize_case


@pytest.fixture(scope="session")
def prepared(axolotl_venv: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every case written out and preprocessed by axolotl, once per session."""
    root = tmp_path_factory.mktemp("axolotl-cases")
    configs = [write_case(case, model_dir, root / case.name) for case in CASES]
    venv.preprocess_many(configs, root)  # per-case failures are left in axolotl-error.txt
    return root


def axolotl_rows(case_dir: Path) -> list[dict[str, list[int]]]:
    error = case_dir / "axolotl-error.txt"
    if error.exists():
        pytest.fail(f"axolotl preprocess failed for {case_dir.name}:\n{error.read_text()[-3000:]}")
    rows = (case_dir / "axolotl-rows.jsonl").read_text().splitlines()
    return [json.loads(line) for line in rows]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_tokens_match_axolotl(case: Case, prepared: Path) -> None:
    case_dir = prepared / case.name
    theirs = axolotl_rows(case_dir)
    ours = tokenize_case(case_dir / "config.yml")
    assert theirs, "axolotl prepared no rows"
    rules = Rules(
        chat=case.rows == "chat",
        train_on_inputs=bool(case.extra.get("train_on_inputs")),
        bos_id=ours.bos_id,
        eos_id=ours.eos_id,
        truncate_at=case.extra.get("sequence_len"),  # only cases that shorten it
    )
    if not case.packed:
        diff = rows_equal(ours.examples, theirs, rules)
        assert not diff, f"{case.name}: ours vs axolotl\n{diff}"
        return
    diff = same_examples(ours.examples, theirs, rules)
    assert not diff, f"{case.name} (before packing): ours vs axolotl\n{diff}"
    assert ours.packed is not None
    diff = same_examples(unpack(ours.packed), theirs, rules)
    assert not diff, f"{case.name} (our packed rows, unpacked): ours vs axolotl\n{diff}"
