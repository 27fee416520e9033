"""Moved to :mod:`pyro_vae.diagnostics.gradient_variance`; this module only re-exports its names.

The first name read from here warns once (``FutureWarning``, giving the new path);
importing this module alone does not warn.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_NEW = "pyro_vae.diagnostics.gradient_variance"
_NAMES = ("GradientStats", "gradient_variance")
_warned = False


def __getattr__(name: str) -> Any:
    global _warned
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not _warned:
        _warned = True
        warnings.warn(
            f"{__name__} has moved to {_NEW}; import {name} from {_NEW}",
            FutureWarning,
            stacklevel=2,
        )
    return getattr(importlib.import_module(_NEW), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_NAMES})


__all__ = list(_NAMES)
