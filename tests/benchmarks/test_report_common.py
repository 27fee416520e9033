"""The benchmarks' shared report helpers against the standard library's statistics."""

import math
import statistics
import sys
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
try:
    from report_common import (
        fastest_of,
        load_average,
        machine_footer,
        mean_and_se,
        run_footer,
        write_report,
    )
finally:
    sys.path.remove(str(BENCHMARKS))


def test_mean_and_se_is_the_mean_and_stdev_over_root_n():
    values = [-19.8, -19.6, -20.1, -19.9]
    mean, se = mean_and_se(values)
    assert math.isclose(mean, statistics.fmean(values), abs_tol=1e-12)
    assert math.isclose(se, statistics.stdev(values) / 2, abs_tol=1e-12)
    assert mean_and_se(torch.tensor(values, dtype=torch.float64)) == (mean, se)  # a tensor
    one = mean_and_se([3.0])
    assert one[0] == 3.0 and math.isnan(one[1])


def test_footers_carry_the_loads_and_the_seconds():
    assert len(load_average().split(", ")) == 3 and len(load_average(" ").split()) == 3
    run = run_footer(("0.1 0.2 0.3", "1.0 1.1 1.2"), 61.4)
    assert run.startswith("Load average at the start: 0.1 0.2 0.3; at the end: 1.0 1.1 1.2.")
    assert "Whole run 61 s on " in run and f"torch {torch.__version__}" in run
    machine = machine_footer(("0.50", "0.70"), 12.6)
    assert machine.startswith("Machine: ") and machine.endswith(
        "load average before 0.50, after 0.70; 13 s in all."
    )


def test_write_report_writes_the_lines_joined_and_prints_them(tmp_path, capsys):
    out = tmp_path / "table.md"
    write_report(out, ["# Title", "", "| a |", "|---|"])
    assert out.read_text() == "# Title\n\n| a |\n|---|"
    assert capsys.readouterr().out == "# Title\n\n| a |\n|---|\n"


def test_fastest_of_returns_the_fastest_calls_result_after_a_first_call():
    calls = []

    def call():
        calls.append(len(calls))
        return len(calls)

    result, seconds = fastest_of(call, 3)
    assert len(calls) == 4 and result in (2, 3, 4) and 0 <= seconds < 1.0
