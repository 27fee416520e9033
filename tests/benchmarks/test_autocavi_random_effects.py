"""Smoke test: the mixed-model benchmark runs at a small N, and AutoCAVI's bound is the
written-out CAVI's."""

import pytest

from tests.benchmarks.benchmark_script import run


@pytest.mark.slow  # a subprocess importing torch and Pyro, fitting three times: 10 s idle
def test_a_small_run_writes_a_row_where_the_bounds_agree(tmp_path):
    out = tmp_path / "table.md"
    run("autocavi_random_effects", "--sizes", "300", "--repeats", "1", "--out", str(out))
    body = [line for line in out.read_text().splitlines() if line.startswith("| 300 ")]
    assert len(body) == 1
    cells = [c.strip() for c in body[0].strip("|").split("|")]
    bound, gap = float(cells[9]), float(cells[10])
    # both stop once a sweep moves the bound less than 1e-8 nats, on the way to the same
    # fixed point: their bounds differ by about that last move, well within 1e-7 of it
    assert gap <= 1e-7 * abs(bound), body[0]
    assert all(float(c.replace(",", "")) > 0 for c in cells[:9]), body[0]
