"""Smoke test: the conv-vs-MLP benchmark runs at tiny sizes and writes its table."""

import pytest
import torch

from pyro_vae.datasets import FASHION_MNIST_DIR
from tests.benchmarks.benchmark_script import load


def _benchmark():
    return load("conv_vs_mlp")


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="needs dataset-fashion-mnist")
def test_tiny_run_writes_one_row_per_architecture_and_the_paired_difference(tmp_path):
    out = tmp_path / "table.md"
    threads = torch.get_num_threads()
    argv = ["--epochs", "1", "--train-images", "256", "--test-images", "64"]
    try:
        _benchmark().main(
            [*argv, "--iwae-images", "4", "--channels", "4,8,8", "--output", str(out)]
        )
    finally:
        torch.set_num_threads(threads)
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    archs = [r.split("|")[1].strip() for r in rows]
    assert archs[:3] == ["arch", "mlp", "conv"]
    for row in rows[1:3]:
        elbo, log_px = (float(c.split("±")[0]) for c in row.split("|")[4:6])
        assert elbo < 0 and log_px >= elbo - 5.0, row  # K = 1000 IWAE is at or above the ELBO
    assert "conv − MLP, paired by seed" in text and "64 test images" in text
