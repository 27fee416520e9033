"""Smoke test: the ARD benchmark runs at small D, AutoCAVI's bound is the written-out VB's
with the grid probe, and the dense probe runs beside it."""

import pytest

from tests.benchmarks.benchmark_script import run


@pytest.mark.slow  # a subprocess importing torch, Pyro and scikit-learn: about 10 s idle
def test_a_small_run_writes_rows_where_the_bounds_agree(tmp_path):
    out = tmp_path / "table.md"
    run("autocavi_ard", "--dims", "5,12", "--dense-up-to", "12", "--out", str(out))
    rows = [line for line in out.read_text().splitlines() if line.startswith(("| 5 ", "| 12 "))]
    assert len(rows) == 2
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        written, auto, gap = float(cells[9]), float(cells[10]), float(cells[11])
        # both stop at a sweep's change below 1e-10 nats on the way to one fixed point
        assert abs(auto - written) <= 1e-8 * abs(written) and gap <= 1e-8, line
        assert float(cells[12]) < 1e-5, line  # E_q[w] against the written-out mean
        assert cells[7] != "—", line  # the dense probe ran
    grid = [c.strip() for c in rows[1].strip("|").split("|")][2]
    assert grid == f"{(91 + 11) * (25 + 3):,}"  # D = 12: (91 + 91//8)(25 + 25//8) points
