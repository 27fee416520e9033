"""Smoke test: the CVAE quadrant benchmark runs at tiny sizes and writes its table and figure."""

import torch

from tests.benchmarks.benchmark_script import load


def _benchmark():
    return load("cvae_quadrant")


def test_quadrants_split_and_join_back():
    bench = _benchmark()
    mask = bench.quadrant_mask((4, 6))
    assert mask.reshape(4, 6)[:2, :3].all() and int(mask.sum()) == 6
    x = torch.arange(48.0).reshape(2, 24)
    rest, quadrant = bench.split(x, mask)
    assert quadrant.shape == (2, 6) and rest.shape == (2, 18)
    assert torch.equal(bench.join(rest, quadrant, mask), x)


def test_quick_run_writes_the_table_and_the_figure(tmp_path):
    out = tmp_path / "table.md"
    threads = torch.get_num_threads()
    try:  # the digits, one epoch of two tiny networks on 512 images
        result = _benchmark().main(["--quick", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    text = out.read_text()
    assert "| deterministic baseline |" in text and "| CVAE | " in text
    assert (tmp_path / "table.png").exists()
    # the IWAE bound with K = 8 lies above the 10-draw ELBO up to Monte Carlo error
    assert result["cvae_iwae"] > result["cvae_elbo"] - 0.5
    assert result["baseline"] < 0 and result["cvae_iwae"] < 0
