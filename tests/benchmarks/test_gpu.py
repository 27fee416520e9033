"""The GPU benchmark's code runs end to end (on the CPU here) and writes its table."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_vae.datasets import FASHION_MNIST_DIR

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="needs dataset-fashion-mnist")
def test_the_gpu_benchmark_runs_on_a_cpu_and_says_so(tmp_path):
    out = tmp_path / "gpu.md"
    argv = ["--device", "cpu", "--num-train", "256", "--epochs", "2", "--out", str(out)]
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), *argv],
        check=True,
        cwd=ROOT,
        capture_output=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    table = out.read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    names = [row.split("|")[1].strip() for row in rows[1:]]
    assert names == [
        "pytorch",
        "plain-pyro",
        "pyro_vae (uncompiled)",
        "pyro_vae (recorded)",
        "pyro_vae (recorded + CUDA graph)",
    ]
    assert "| pytorch |" in table and "1.00x" in table
    assert "these numbers say nothing about a GPU" in table


def test_cuda_on_a_machine_without_one_is_refused_in_one_line():
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cuda"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "--device: 'cuda', but this machine has no CUDA device" in done.stderr
