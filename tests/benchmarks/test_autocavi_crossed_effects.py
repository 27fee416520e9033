"""Smoke test: the crossed-effects benchmark runs at a small size; AutoCAVI's plain sweeps
are the written-out CAVI's, and its over-relaxed fit takes fewer of them to a bound no
lower."""

import pytest

from tests.benchmarks.benchmark_script import run


@pytest.mark.slow  # a subprocess importing torch and Pyro, fitting three times: 10 s idle
def test_a_small_run_writes_rows_where_plain_sweeps_match_and_overrelaxed_ones_are_fewer(
    tmp_path,
):
    out = tmp_path / "table.md"
    run("autocavi_crossed_effects", "--shapes", "20x15x1", "--out", str(out))
    rows = [line for line in out.read_text().splitlines() if line.startswith("| 300 ")]
    cells = {c[1]: c for c in ([x.strip() for x in r.strip("|").split("|")] for r in rows)}
    written, plain = cells["written out"], cells["AutoCAVI, plain sweeps"]
    fast, reference = cells["AutoCAVI, over-relaxed"], cells["reference: written out to tol 1e-13"]
    assert len(rows) == 4 and written[2] == plain[2]  # the same sweeps, one by one
    assert abs(float(written[6]) - float(plain[6])) < 1e-7 * abs(float(written[6]))
    assert int(fast[2]) * 4 < int(plain[2])
    # no fit exceeds the optimum the long run approaches (by more than float64 rounding)
    assert all(float(row[7]) > -1e-9 for row in (written, plain, fast))
    assert float(fast[6]) >= float(plain[6]) - 1e-8
    assert float(reference[7]) == 0
