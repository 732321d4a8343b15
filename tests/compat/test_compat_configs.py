"""Config coverage: every example config shipped in the installed axolotl package goes
through `finetune validate` and is accepted or refused as docs/axolotl.md records,
refusals with a one-line reason at a line number, never a traceback."""

from __future__ import annotations

from pathlib import Path

from bench.vs_axolotl import coverage


def test_shipped_example_configs(axolotl_venv: Path) -> None:
    root = coverage.package_root()
    configs = coverage.shipped_configs()
    found = {str(p.relative_to(root)) for p in configs}
    assert found == set(coverage.VERDICTS), (
        "the shipped example configs changed; classify them in coverage.VERDICTS and "
        f"docs/axolotl.md: {sorted(found ^ set(coverage.VERDICTS))}"
    )
    for config in configs:
        rel = str(config.relative_to(root))
        outcome = coverage.validate(config)
        assert not outcome.traceback, f"{rel}: traceback from finetune validate"
        expected = coverage.VERDICTS[rel][0]
        got = "accepted" if outcome.exit_code == 0 and outcome.valid else "refused"
        assert got == expected, f"{rel}: {got} (expected {expected}): {outcome}"
        if got == "refused":
            assert outcome.exit_code == 2 and outcome.issues, outcome
            assert all("\n" not in issue for issue in outcome.issues), outcome.issues
