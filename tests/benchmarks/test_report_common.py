"""The benchmarks' shared report helpers against the standard library's statistics."""

import argparse
import math
import re
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
        output_file,
        positive_int,
        quick_settings,
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


def test_an_output_flag_is_refused_when_read_where_its_folder_is_missing(tmp_path):
    """Tester ES: performance.py measured for minutes, then failed writing --output into a
    missing folder, printing no table. The flag is refused by argparse, naming it, before
    any measuring; and every benchmark's output flags are of this type."""
    parser = argparse.ArgumentParser(prog="bench", exit_on_error=False)
    parser.add_argument("--out", type=output_file)
    assert parser.parse_args(["--out", str(tmp_path / "x.md")]).out == tmp_path / "x.md"
    for bad, why in [(tmp_path / "missing" / "x.md", "does not exist"), (tmp_path, "a folder")]:
        try:
            parser.parse_args(["--out", str(bad)])
        except argparse.ArgumentError as error:
            assert "--out" in str(error) and why in str(error)
        else:
            raise AssertionError(f"{bad} was taken")
    flag = re.compile(r'add_argument\(\s*"--(out|output|json|readme)", type=Path\b')
    unchecked = [p.name for p in BENCHMARKS.glob("*.py") if flag.search(p.read_text())]
    assert unchecked == []


def test_quick_sizes_give_way_to_flags_given_beside_them():
    """Tester ES: `--quick --epochs 7 --seeds 5 6` ran 1 epoch of seed 0, its report
    naming the flags it ignored. A flag given (either spelling) is taken; the rest quick."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=positive_int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ll-samples", type=int, default=1000)
    for argv in (["--quick", "--epochs", "7", "--seeds", "5", "6"], ["--quick", "--epochs=7"]):
        args = parser.parse_args(argv)
        quick_settings(parser, argv, args, {"epochs": 1, "seeds": [0], "ll_samples": 8})
        assert args.epochs == 7 and args.ll_samples == 8
        assert args.seeds == ([5, 6] if "--seeds" in argv else [0])
    try:
        positive_int("0")
    except argparse.ArgumentTypeError as error:
        assert "0 is not a positive integer" in str(error)
    else:
        raise AssertionError("0 was taken")
