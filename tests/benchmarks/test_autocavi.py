"""Smoke test: the AutoCAVI benchmark runs at quick settings and AutoCAVI's bound is the
hand-written class's on both rows."""

import pytest

from tests.benchmarks.benchmark_script import run


@pytest.mark.slow  # a subprocess with SVI runs: 10 s idle, 30 s loaded
def test_quick_run_writes_rows_where_autocavi_matches_the_hand_written_bound(tmp_path):
    out = tmp_path / "table.md"
    run("autocavi", "--quick", "--out", str(out))
    tables = out.read_text().split("\n\n")
    main, sweeps = (t for t in tables if t.startswith("| model"))
    body = [line for line in main.splitlines()[2:] if line.startswith("| ")]
    assert len(body) == 2
    for row in body:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == cells[3], row  # the same bound to the printed 3 decimals
    per_sweep = [line for line in sweeps.splitlines()[2:] if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in per_sweep] == [r.split("|")[1].strip() for r in body]
    for row in per_sweep:  # milliseconds per iteration and per sweep, both positive
        assert all(float(c) > 0 for c in row.strip("|").split("|")[1:]), row
