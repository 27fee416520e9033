"""Moved to :mod:`pyro_vae.estimators.compiled`, beside the estimators it records (as Pyro
keeps ``JitTrace_ELBO`` beside ``Trace_ELBO``). The names resolve from there, each with
one ``FutureWarning`` the first time it is read here."""

from __future__ import annotations

from typing import Any

from pyro_vae.moved import hand_over

_NEW = "pyro_vae.estimators.compiled"
_MOVED = {"COMPILABLE", "CaptureError", "CompiledELBO", "compilable"}
_WARNED: set[str] = set()


def __getattr__(name: str) -> Any:
    return hand_over(__name__, _NEW, _MOVED, name, _WARNED)
