"""The benchmark script runs and reports every ratio (no timing is asserted here)."""

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.fixture
def script(monkeypatch):
    """Import a script of benchmarks/ by name, run from the repository root; forgotten after."""
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    yield importlib.import_module
    for name in ("run", "floor"):
        sys.modules.pop(name, None)


@pytest.mark.slow
def test_quick_benchmark_reports_all_ratios(script, capsys):
    run = script("run")
    results = run.main(["--quick"])
    out = capsys.readouterr().out
    for tag in ("a. trace", "b. trace", "c. skip", "d. trace time vs T", "d. trace / generate"):
        assert tag in out
    assert {"a_trace_vs_generate", "b_peak_mb"} <= set(results)
    assert set(results["c_skip"]) == {2} and results["c_skip"][2]["ideal"] == 8 / 6
    assert list(results["d_scaling_T"]) == [4, 8]


def test_memory_probe_and_macs_ratio(script):
    run = script("run")

    def hold_64_mb():
        block = bytearray(64 * 2**20)
        block[::4096] = b"x" * len(block[::4096])  # touch every page
        return len(block)

    assert 60 < run.peak_extra_mb(hold_64_mb) < 90  # freed on return, the peak is kept
    # generate: (10 + 2) * 1 * 12 * 4 * 4 + 2 * 4 * 100 = 3104; lens adds 2 * 2 * 4 * 100
    assert run.macs_ratio(dict(V=100, L=1, d=4, T=2), 10) == (3104 + 1600) / 3104


@pytest.mark.slow
def test_floor_benchmark_reports_ratios_split_and_memory(script, capsys):
    floor = script("floor")

    results = floor.main(["--quick"])
    out = capsys.readouterr().out
    assert "trace/(plain+floor)" in out and "where trace's time goes" in out
    assert list(results["T"]) == [4, 8, 16]
    for r in results["T"].values():
        assert r["trace_vs_plain_plus_floor"] == r["trace_s"] / (r["plain_s"] + r["floor_s"])
        ratios = [t / (p + f) for p, f, t in zip(*r["rounds"].values())]
        assert r["median_round_trace_vs_plain_plus_floor"] == ratios[0]  # one round
    parts = results["split"]["parts_s"]
    assert set(parts) == {"model forward", "lens products", "reductions", "bookkeeping"}
    assert parts["lens products"] > 0 and parts["model forward"] > 0
    assert 0 < results["split"]["hooks_s"] < parts["model forward"]
    assert results["split"]["accounted_trace_vs_plain_plus_floor"] > 1
    assert set(results["peak_mb"]) == {4, 16, 32}
    assert all(set(m) == {"trace", "plain"} for m in results["peak_mb"].values())
