"""Smoke test: the priors benchmark runs at tiny sizes and writes its table."""

import torch

from tests.benchmarks.benchmark_script import load


def _benchmark():
    return load("priors")


def test_quick_run_writes_a_row_per_prior(tmp_path):
    out = tmp_path / "table.md"
    threads = torch.get_num_threads()
    try:  # in this process: three one-epoch fits of a tiny VAE, ~3 s
        _benchmark().main(["--quick", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    names = [r.split("|")[1].strip() for r in rows]
    assert names == ["prior", "N(0, I)", "mixture of Gaussians, K = 3", "VampPrior, K = 4"]
    for row in rows[1:]:
        elbo, log_p, kl = (float(c) for c in row.split("|")[2:5])
        assert elbo < 0 and log_p > elbo - 1.0 and kl > -0.5, row  # K = 8 IWAE: near or above
    assert "load average before" in text
