"""The precision benchmark's table: a run rewrites its own device's block and keeps the
other's (the GPU block says it was not measured until a GPU run writes it)."""

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def precision_benchmark():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import precision

        yield precision
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_each_device_rewrites_only_its_own_block(precision_benchmark, tmp_path):
    out = tmp_path / "precision.md"
    precision_benchmark.write(out, "cpu", "| 32 | 1.0 |")
    text = out.read_text()
    assert "| 32 | 1.0 |" in text
    assert text.count(precision_benchmark.NOT_MEASURED) == 3  # 32, bf16, 16-mixed on a GPU
    precision_benchmark.write(out, "cuda", "| bf16 | 0.1 |")
    text = out.read_text()
    assert "| 32 | 1.0 |" in text and "| bf16 | 0.1 |" in text
    assert precision_benchmark.NOT_MEASURED not in text
    precision_benchmark.write(out, "cpu", "| 32 | 2.0 |")
    assert "| 32 | 1.0 |" not in out.read_text() and "| bf16 | 0.1 |" in out.read_text()


def test_the_committed_table_has_both_devices_and_the_load():
    text = (BENCHMARKS / "precision.md").read_text()
    assert "<!-- cpu:begin -->" in text and "<!-- cuda:begin -->" in text
    assert "Load average" in text and "| bf16 |" in text
