"""Progress on long work: a tqdm bar on a terminal, nothing per step in a log file.

A progress bar redraws itself with carriage returns many times a second; written to a
file (a cluster job's log, ``2> fit.log``) that is megabytes of partial lines. tqdm
itself disables a bar whose stream is not a terminal when asked with ``disable=None``;
:func:`bar` asks that, and :func:`interactive` tells the fit loop to write one line per
epoch instead of about 20 per run.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

__all__ = ["bar", "interactive"]


def interactive() -> bool:
    """Whether stderr, where progress goes, is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without it, or closed
        return False


def bar(iterable: Iterable | None = None, progress: bool = True, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, shown only when ``progress`` is on and stderr is a
    terminal (tqdm's ``disable=None``)."""
    return tqdm(iterable, disable=None if progress else True, **kwargs)
