"""Smoke test: the M2 benchmark runs at tiny sizes on the digits and writes its table."""

import torch

from tests.benchmarks.benchmark_script import load


def _benchmark():
    return load("m2_semisupervised")


def test_quick_run_writes_a_row_per_contender(tmp_path):
    out = tmp_path / "table.md"
    threads = torch.get_num_threads()
    try:  # one epoch of each contender on the digits (~25 s on a busy 2-core machine)
        _benchmark().main(["--quick", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    names = [r.split("|")[1].strip() for r in rows]
    assert names == [
        "contender",
        "pyro_vae M2",
        "supervised only, same epochs (1)",
        "supervised only, same steps (13)",
        "plain Pyro (ss_vae_M2 style)",
    ]
    for row in rows[1:]:
        cells = [c.strip() for c in row.split("|")[2:6]]
        assert 0.0 <= float(cells[0]) <= 1.0, row
        if cells[1] != "—":  # the generative contenders: K = 4 IWAE near or above the ELBO
            assert float(cells[1]) < 0 and float(cells[2]) > float(cells[1]) - 1.0, row
        assert float(cells[3]) > 0, row
    assert "load average before" in text
