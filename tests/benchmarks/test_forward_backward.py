"""Smoke test: the forward-backward benchmark writes a row per size, both ways' log Z equal
to Pyro's DiscreteHMM's."""

from tests.benchmarks.benchmark_script import run


def test_a_small_run_writes_rows_whose_log_z_is_pyro_s(tmp_path):
    out = tmp_path / "table.md"
    run("forward_backward", "--sizes", "3x20x1,2x9x3", "--repeats", "1", "--out", str(out))
    body = [line for line in out.read_text().splitlines() if line.startswith("| ") and
            line[2].isdigit()]  # fmt: skip
    assert len(body) == 2
    for line in body:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[4] in ("scan", "loop")
        assert float(cells[10]) <= 1e-9, line  # sums of 20 steps' log-likelihoods
