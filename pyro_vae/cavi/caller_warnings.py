"""Warnings of the CAVI estimators, attributed to the line that called them.

A fixed ``stacklevel`` names the right line only while the warning sits a fixed number of
calls below the estimator's public method: the chains' warning, six calls below
``AutoCAVI.fit``, named a line of ``coordinate_updates.py``; and a method run with the CPU
as default device (:mod:`pyro_vae.cavi.cpu_default`) adds a call. :func:`warn_at_caller`
names the first frame outside this package and outside Pyro and torch (an inner fit of
:class:`~pyro_vae.cavi.ConditionalCAVIGuide` runs inside Pyro's handlers): the user's
call, as scikit-learn's ``ConvergenceWarning`` names the line that called ``fit``.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pyro
import torch

_INSIDE = tuple(
    str(Path(module.__file__).parent) + os.sep for module in (sys.modules[__package__], pyro, torch)
)


def warn_at_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn(message, category)`` at the first calling frame whose file lies
    outside ``pyro_vae.cavi``, Pyro and torch."""
    frame, level = sys._getframe(1), 2  # stacklevel 2 is this function's caller
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_INSIDE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
