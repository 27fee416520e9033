"""Moved to :mod:`pyro_vae.estimators.compiled`, beside the estimators it records (as Pyro
keeps ``JitTrace_ELBO`` beside ``Trace_ELBO``). The names resolve from there, each with
one ``FutureWarning`` the first time it is read here."""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_NEW = "pyro_vae.estimators.compiled"
_MOVED = {"COMPILABLE", "CaptureError", "CompiledELBO", "compilable"}
_WARNED: set[str] = set()


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _WARNED:
        _WARNED.add(name)
        warnings.warn(
            f"pyro_vae.compiled.{name} has moved to {_NEW}.{name}; import it from there",
            FutureWarning,
            stacklevel=2,
        )
    return getattr(importlib.import_module(_NEW), name)
