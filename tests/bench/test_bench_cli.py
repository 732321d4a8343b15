"""`python -m bench.run`: arguments, and a quick packing-only run writing its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.run import main


def test_quick_packing_run_writes_results_and_report(tmp_path: Path):
    assert main(["--quick", "--only", "packing", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["quick"] is True and results["errors"] == {}
    assert results["command"] == f"python -m bench.run --quick --only packing --out {tmp_path}"
    datasets = {row["dataset"] for row in results["packing"]["rows"]}
    assert datasets == {"alpaca_sample", "synthetic"}
    report = (tmp_path / "RESULTS.md").read_text()
    assert "## 2. Packing efficiency" in report
    assert "Quick (smoke-test) sizes" in report
    assert "## 1. Training throughput" not in report


def test_unknown_bench_is_refused(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        main(["--only", "packing,warp"])
    assert "unknown bench(es) warp" in capsys.readouterr().err
