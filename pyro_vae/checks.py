"""Argument checks shared by the run configuration, the command line and the diagnostics:
each error names the argument, the value and what was expected, the same way everywhere.

``check_count`` is the package's one count check (the CAVI branch keeps its own
conversions in :mod:`pyro_vae.cavi._checks`, which also return the converted value).
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

MAX_LEVELS = 256  # an 8-bit image has 256 values; a categorical over more is all empty classes
#: The largest seed ``pyro.set_rng_seed`` takes: it seeds NumPy's generator too.
MAX_SEED = 2**32 - 1


def check_seed(name: str, value: Any) -> None:
    """Refuse ``value`` unless it is a seed ``pyro.set_rng_seed`` takes: an integer from 0
    to :data:`MAX_SEED` (above it NumPy's "Seed must be between 0 and 2**32 - 1" named no
    flag, and came after the run was loaded: tester DM's ``evaluate --seed``, found on
    ``sample`` and ``diagnose`` too).

    Raises:
        ValueError: naming ``name``, the value and the range."""
    check_count(name, value, 0)
    if value > MAX_SEED:
        raise ValueError(
            f"{name}: {value} is above 2**32 - 1, the largest seed NumPy's generator takes "
            "(pyro.set_rng_seed seeds Python's, NumPy's and torch's)"
        )


def check_count(
    name: str, value: Any, minimum: int, meaning: str = "", allow_none: bool = False
) -> None:
    """Refuse ``value`` unless it is an integer ≥ ``minimum`` (or ``None`` when allowed).

    The one count check of the package: run configurations call it with field names, the
    command line with flag names, the diagnostics with argument names. ``meaning`` says
    what a special value means or why the minimum, e.g. ``" (0 skips it)"`` or
    ``"; PSIS needs ≥ 5 tail draws"``. Python and NumPy integers are counts; ``bool`` and
    floats (even integral ones) are not.

    Raises:
        ValueError: ``"{name}: {value} is not a positive integer{meaning}"`` (minimum 1;
            ``a non-negative integer`` for 0, ``an integer ≥ {minimum}`` otherwise).
    """
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}: {value!r} is not {_a_count_from(minimum)}{meaning}")


def _a_count_from(minimum: int) -> str:
    if minimum == 1:
        return "a positive integer"
    if minimum == 0:
        return "a non-negative integer"
    return f"an integer ≥ {minimum}"


def python_scalar(value: Any) -> Any:
    """``value``'s Python scalar where it is a NumPy scalar or a 0-d array or tensor
    (``.item()``); anything else as it is."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return value.item()
    return value


def as_real(value: Any) -> float | None:
    """``value`` as a Python float if it is a real number, else ``None``.

    Real numbers are Python and NumPy integers and floats and 0-d arrays or tensors of them
    (``np.float32(0.5)``, ``torch.tensor(0.5)``: what a sweep over ``np.linspace`` or a
    tensor hands over; tester EW's ``decay=np.float32(0.9)`` was refused as not a number).
    ``bool`` (Python, NumPy or a bool tensor) is not a number here, nor is a string.
    The float is what the caller stores, so config.json stays plain JSON."""
    value = python_scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None  # np.bool_ is not numbers.Real; np.float32 and np.int64 are
    return float(value)


def check_learning_rate(name: str, value: Any) -> float:
    """``value`` as a float if it is a finite number > 0 (:func:`as_real`).

    Raises:
        ValueError: naming ``name`` and the value.
    """
    number = as_real(value)
    if number is None or not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name}: {value!r} is not a positive learning rate")
    return number


def check_levels(name: str, value: Any) -> None:
    """Refuse a number of categorical pixel levels outside 2..256 (``None``: the default).

    Raises:
        ValueError: naming ``name`` and the value.
    """
    check_count(name, value, 2, allow_none=True)
    if value is not None and value > MAX_LEVELS:
        raise ValueError(
            f"{name}: {value} pixel levels; expected at most {MAX_LEVELS} (an 8-bit image has "
            "256 values, and the decoder's output grows with the levels)"
        )


def check_widths(name: str, value: Any) -> None:
    """Refuse hidden-layer widths that are not a list of positive integers.

    Raises:
        ValueError: naming ``name`` and the first bad width.
    """
    if not isinstance(value, list | tuple):
        raise ValueError(f"{name}: {value!r} is not a list of layer widths")
    for width in value:
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ValueError(f"{name}: {width!r} is not a positive layer width")


def machine_memory() -> int:
    """This machine's physical memory, in bytes (``os.sysconf``)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(
    arg: str, count: int, bytes_each: int, what: str, note: str = "", hint: str = ""
) -> None:
    """Refuse ``count`` items of ``bytes_each`` bytes that would take more than half this
    machine's memory (:func:`machine_memory`), before any of them is made: the diagnostics'
    draws, counted generously (testers CO, CQ, CR: each grew until the machine killed it).

    Raises:
        ValueError: "``arg``: ``count`` ``what`` need about … GiB``note``, more than half
            this machine's … GiB; expected at most …``hint``"."""
    budget = machine_memory() // 2
    if count * bytes_each > budget:
        raise ValueError(
            f"{arg}: {count:,} {what} need about {count * bytes_each / 2**30:,.1f} GiB{note}, "
            f"more than half this machine's {2 * budget / 2**30:,.1f} GiB; expected at most "
            f"{budget // bytes_each:,}{hint}"
        )
