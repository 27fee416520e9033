"""Smoke test: the scaling benchmark runs at a small N, each fit in its own process, and
AutoCAVI's bound is the hand-written class's from the same responsibilities."""

import pytest

from tests.benchmarks.benchmark_script import run


@pytest.mark.slow  # two subprocesses importing torch and Pyro: 10 s idle
def test_a_small_run_writes_a_row_where_the_bounds_agree(tmp_path):
    out = tmp_path / "table.md"
    run("autocavi_scale", "--sizes", "400", "--out", str(out))
    body = [line for line in out.read_text().splitlines()[5:] if line.startswith("| ")]
    assert len(body) == 1
    cells = [c.strip() for c in body[0].strip("|").split("|")]
    assert cells[0] == "400"
    bound, gap = float(cells[9]), float(cells[10])
    assert gap <= 1e-8 * abs(bound), body[0]  # the same update from the same start
    # the same sweeps, give or take the last: a change of about tol = 1e-8 nats can fall on
    # either side of it in float64 summed in another order (N = 400: 15 and 14)
    assert abs(int(cells[2]) - int(cells[6])) <= 1
    assert all(float(c) > 0 for c in cells[1:9]), body[0]
