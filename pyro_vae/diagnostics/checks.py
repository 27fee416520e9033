"""The count checker of the diagnostics package (one, so that every count is refused alike)."""

from __future__ import annotations


def check_count(arg: str, value: int, minimum: int, why: str = "") -> None:
    """Refuse ``value`` unless it is an integer ≥ ``minimum`` (``bool`` is not a count).

    Raises:
        ValueError: ``"{arg}: {value!r} is not an integer ≥ {minimum}"``, then ``"; {why}"``
            when a reason is given.
    """
    if isinstance(value, bool) or int(value) != value or value < minimum:
        reason = f"; {why}" if why else ""
        raise ValueError(f"{arg}: {value!r} is not an integer ≥ {minimum}{reason}")
