"""Smoke test: the fixed-budget benchmark runs at tiny sizes, saves each run, and resumes."""

import json

import pytest
import torch

from pyro_vae.datasets import FASHION_MNIST_DIR
from tests.benchmarks.benchmark_script import load

TINY = ["--k", "2", "--epochs", "1", "--seeds", "1", "--train-images", "256"]
TINY += ["--ll-samples", "4", "--ll-points", "8"]


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="needs dataset-fashion-mnist")
def test_a_resumed_run_reads_the_finished_runs_instead_of_training_them(tmp_path):
    out, results = tmp_path / "table.md", tmp_path / "table.json"
    threads = torch.get_num_threads()
    try:
        load("dreg_budget").main([*TINY, "--output", str(out)])
        saved = json.loads(results.read_text())
        assert [r["contender"] for r in saved["runs"]] == [
            "VAE (trace)", "IWAE", "IWAE-DReG", "IAF guide (trace)"
        ]  # fmt: skip
        # a value only the file holds: a resumed run must show it, not retrain
        saved["runs"][1]["log_px"] = -1.0
        results.write_text(json.dumps(saved))
        load("dreg_budget").main([*TINY, "--output", str(out), "--resume"])
        assert "| IWAE | -1.00 |" in out.read_text()
        assert "4 of the 4 runs were trained in earlier sittings" in out.read_text()
        with pytest.raises(ValueError, match="--resume: .* holds runs with settings"):
            load("dreg_budget").main([*TINY[:-2], "--ll-points", "9", "--output", str(out),
                                      "--resume"])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
