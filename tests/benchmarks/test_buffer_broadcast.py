"""The buffer-broadcast benchmark's pieces: the buffers it broadcasts and its table (the
two-process run itself is ``python benchmarks/buffer_broadcast.py``, a minute)."""

import torch

from tests.benchmarks.benchmark_script import load


def test_a_batchnorm_layer_holds_three_buffers_of_two_dtypes():
    bench = load("buffer_broadcast")
    buffers = bench.batchnorm_buffers(10, 64)
    assert len(buffers) == 30
    assert {b.dtype for b in buffers} == {torch.float32, torch.int64}


def test_the_table_gives_each_size_s_times_and_their_ratio():
    bench = load("buffer_broadcast")
    rows = [{"layers": 10, "width": 64, "one_per_buffer": 3.5, "coalesced": 0.5}]
    report = bench.table(rows, (1.0, 1.0, 1.0), (2.0, 1.0, 1.0))
    assert "| 10 | 64 | 30 | 3.500 | 0.500 | 7.0x |" in report
    assert "before: 1.00, 1.00, 1.00; after: 2.00, 1.00, 1.00" in report
