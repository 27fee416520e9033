"""Smoke test: the performance suite runs end to end at tiny sizes and writes every section.

No timing is asserted (the numbers are whatever a shared CI box gives); what must hold is
that every contender ran, every figure is a finite number, and pythae is skipped cleanly
when it is not installed.
"""

import math
import re
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def performance():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import performance

        yield performance
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_quick_suite_writes_every_section(performance, tmp_path):
    out = tmp_path / "RESULTS.md"
    performance.main(["--quick", "--in-process", "--threads", "1", "--output", str(out)])
    text = out.read_text()
    for heading in (
        "## Targets",
        "## Step overhead",
        "## Step overhead and the memory allocator",
        "## Epochs and quality",
        "## Evaluation throughput",
        "## Scaling: `fit`",
        "## Scaling: `pyro_vae.cavi",
    ):
        assert heading in text
    for contender in ("pyro_vae trace", "pyro_vae vimco, K=2", "plain Pyro script"):
        assert contender in text
    for label in ("pyro_vae (`fit`", "plain Pyro script (examples", "hand-written PyTorch |"):
        assert label in text
    pythae_row = "pythae `VAE` + `BaseTrainer` |" in text
    assert pythae_row != ("pythae left out" in text)
    numbers = [float(v) for v in re.findall(r"-?\d+\.\d+", text)]
    assert numbers and all(math.isfinite(v) for v in numbers)


def test_suite_without_pythae_leaves_it_out(performance, monkeypatch):
    monkeypatch.setitem(sys.modules, "pythae", None)
    monkeypatch.setitem(sys.modules, "pythae.models", None)
    assert performance.pythae_status() is not None
