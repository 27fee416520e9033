"""Moved to :mod:`pyro_vae.diagnostics.calibration`; this module only re-exports its names.

The first name read from here warns once (``FutureWarning``, giving the new path);
importing this module alone does not warn.
"""

from __future__ import annotations

from typing import Any

from pyro_vae.moved import hand_over

_NEW = "pyro_vae.diagnostics.calibration"
_NAMES = ("VSBCResult", "symmetry_test", "vsbc", "vsbc_with")
_WARNED: set[str] = set()


def __getattr__(name: str) -> Any:
    return hand_over(__name__, _NEW, _NAMES, name, _WARNED, key=__name__)


def __dir__() -> list[str]:
    return sorted({*globals(), *_NAMES})


__all__ = list(_NAMES)
