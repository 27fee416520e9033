"""What the benchmark scripts' reports share: a mean with its standard error, the load
average, and the footer that says on what machine, under what load and in how long a
table was measured. The scripts import it as a sibling module (``benchmarks/`` is on
``sys.path`` when one runs as ``python benchmarks/NAME.py``).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from collections.abc import Iterable
from pathlib import Path

import pyro
import torch


def mean_and_se(values: Iterable[float] | torch.Tensor) -> tuple[float, float]:
    """The mean of ``values`` and its standard error s / √n (s with n − 1), in float64;
    the standard error is NaN for one value."""
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    se = (t.std() / math.sqrt(t.numel())).item() if t.numel() > 1 else math.nan
    return t.mean().item(), se


def load_average(sep: str = ", ") -> str:
    """The 1, 5 and 15 minute load averages, two decimals each, joined by ``sep``."""
    return sep.join(f"{x:.2f}" for x in os.getloadavg())


def cpu_name() -> str:
    """The processor's name, or the machine's architecture where the platform has none."""
    return platform.processor() or platform.machine()


def run_footer(loads: tuple[str, str], seconds: float) -> str:
    """One line: the load average at the start and end, the whole run's seconds, the CPU,
    torch's threads and the torch and Pyro versions."""
    return (
        f"Load average at the start: {loads[0]}; at the end: {loads[1]}. Whole run "
        f"{seconds:.0f} s on {cpu_name()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, pyro {pyro.__version__}."
    )


def machine_footer(loads: tuple[str, str], seconds: float) -> str:
    """One line: the CPU and its cores, torch and Pyro versions, the load average before
    and after, and the seconds in all."""
    return (
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, pyro "
        f"{pyro.__version__}; load average before {loads[0]}, after {loads[1]}; "
        f"{seconds:.0f} s in all."
    )


def output_file(text: str) -> Path:
    """argparse ``type`` of a flag naming a file a script writes: the path, refused when
    the flag is read (argparse's error names the flag) where it is a folder or its folder
    does not exist or cannot be written, so that minutes of measuring are not lost at the
    last step (tester ES: ``performance.py --output`` into a missing folder failed after
    every measurement, printing no table)."""
    path = Path(text)
    folder = path.parent
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; expected a file to write")
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: its folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text}: its folder {folder} cannot be written")
    return path


def positive_int(text: str) -> int:
    """argparse ``type`` of a count that must be at least 1 (argparse's error names the
    flag: tester ES, ``--repeats 0`` ended in an UnboundLocalError and ``--threads 0`` in
    torch's words)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def quick_settings(parser: argparse.ArgumentParser, argv: list[str], args, quick: dict) -> None:
    """Set ``args``' attributes to ``quick``'s values (``--quick``'s tiny sizes) where
    ``argv`` does not give their flag: a flag given beside ``--quick`` is taken (tester
    ES: ``--quick --epochs 7 --seeds 5 6`` ran 1 epoch of seed 0, and its report's header
    named the flags it had ignored)."""
    given = set()
    for action in parser._actions:  # argparse keeps no record of what was typed
        for option in action.option_strings:
            if any(word == option or word.startswith(option + "=") for word in argv):
                given.add(action.dest)
    for name, value in quick.items():
        if name not in given:
            setattr(args, name, value)


def write_report(path, lines: list[str]) -> None:
    """Write ``lines`` (a Markdown report) to ``path`` as one text, and print it."""
    text = "\n".join(lines)
    path.write_text(text)
    print(text)


def fastest_of(call, repeats: int):
    """(the result of ``call``'s fastest of ``repeats`` calls after a first one, which pays
    for lazy initialization; that call's wall time in seconds)."""
    call()
    result, fastest = None, float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = call()
        elapsed = time.perf_counter() - start
        if elapsed < fastest:
            result, fastest = out, elapsed
    return result, fastest
