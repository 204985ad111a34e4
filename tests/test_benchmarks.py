"""The benchmark script runs and reports every ratio (no timing is asserted here)."""

import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_quick_benchmark_reports_all_ratios(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import run

    results = run.main(["--quick"])
    out = capsys.readouterr().out
    for tag in ("a. trace", "b. trace", "c. skip", "d. trace time vs T", "d. trace / generate"):
        assert tag in out
    assert results["a_trace_vs_generate"] > 0
    # Quick sizes keep ~0.5 MB, below what peak-RSS deltas resolve: presence, not size.
    assert results["b_peak_mb"]["naive"] >= 0 and results["b_peak_mb"]["trace"] >= 0
    assert set(results["c_skip"]) == {2} and results["c_skip"][2]["ideal"] == 8 / 6
    assert list(results["d_scaling_T"]) == [4, 8]
    sys.modules.pop("run", None)
