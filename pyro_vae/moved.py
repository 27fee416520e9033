"""Old import paths kept working: a moved name is handed over from its new module, with
one ``FutureWarning`` that gives the new path (PEP 562 module ``__getattr__``).

A module that names moved things defines::

    def __getattr__(name):
        return hand_over(__name__, NEW_MODULE, NAMES, name, _WARNED)

and importing it alone does not warn.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Collection
from typing import Any


def hand_over(
    old: str, new: str, names: Collection[str], name: str, warned: set[str], key: str = ""
) -> Any:
    """``new``'s attribute ``name``, which used to live in ``old``.

    The first time ``key`` (default: ``name``) is met it is added to ``warned`` and a
    ``FutureWarning`` says ``"{old}.{name} has moved to {new}.{name}"``; pass ``key=old``
    to warn once per module rather than once per name.

    Raises:
        AttributeError: ``name`` is not one of ``names``, as for any missing attribute.
    """
    if name not in names:
        raise AttributeError(f"module {old!r} has no attribute {name!r}")
    key = key or name
    if key not in warned:
        warned.add(key)
        warnings.warn(
            f"{old}.{name} has moved to {new}.{name}; import it from there",
            FutureWarning,
            stacklevel=3,
        )
    return getattr(importlib.import_module(new), name)
