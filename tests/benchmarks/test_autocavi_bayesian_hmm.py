"""The Bayesian HMM benchmark's VB-HMM written out (its reference) against AutoCAVI on the
same model from the same start, sweep for sweep; and a small end-to-end run."""

import pytest
import torch

from pyro_vae.cavi import AutoCAVI
from tests.benchmarks.benchmark_script import load, run

bench = load("autocavi_bayesian_hmm")


@pytest.mark.parametrize("sequences", [None, 4], ids=["one sequence", "four in a plate"])
def test_the_written_out_vb_hmm_is_autocavis_fit_sweep_for_sweep(sequences):
    t = 8 if sequences is None else 6
    y, r = bench.data(3, t, sequences), bench.start(3, t, sequences)
    bounds, alpha = bench.hand_written(y, r, tol=0.0, max_iter=5)
    init = {f"s_{i}": r[i] for i in range(t)}
    fit = AutoCAVI(bench.hmm(3), init=init, tol=0.0, max_iter=5).fit(y)
    assert fit.lower_bounds_ == pytest.approx(bounds, rel=1e-10)
    q_a = fit.variational_distributions()["A"].concentration
    assert torch.allclose(q_a, alpha, rtol=1e-10)


@pytest.mark.slow  # a subprocess importing torch and Pyro, and three fits
def test_a_small_run_writes_a_row_with_autocavi_at_the_written_out_bound(tmp_path):
    out = tmp_path / "table.md"
    run("autocavi_bayesian_hmm", "--sizes", "2x10,2x6x3", "--repeats", "1", "--out", str(out))
    for size in ("| 2 | 10 | 1 |", "| 2 | 6 | 3 |"):
        rows = [line for line in out.read_text().splitlines() if line.startswith(size)]
        cells = [c.strip() for c in rows[0].strip("|").split("|")]
        assert cells[3] == cells[5]  # the same number of sweeps
        assert float(cells[11]) < 1e-9 and float(cells[12]) < 1e-8  # bound gap, q(A) gap
