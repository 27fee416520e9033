"""Diagnostics of a variational fit: does q(z | x) deserve the trust its ELBO asks for?

One job per module:

- :mod:`~pyro_vae.diagnostics.inference_data`: ArviZ ``InferenceData`` from any guide
  (:func:`to_inference_data`), written and read as netCDF.
- :mod:`~pyro_vae.diagnostics.psis`: PSIS k̂ of the importance ratios p(x, z) / q(z | x),
  joint (:func:`psis_khat`) and per datapoint (:func:`psis_khat_per_datapoint`), after
  Yao, Vehtari, Simpson & Gelman 2018; :mod:`~pyro_vae.diagnostics.enumeration` gives the
  exact answers for a discrete q with few states.
- :mod:`~pyro_vae.diagnostics.loo`: PSIS-LOO of the model from draws of q
  (:func:`loo_approximate_posterior`, Magnusson et al. 2019), where ``az.loo`` scores q.
- :mod:`~pyro_vae.diagnostics.calibration`: variational simulation-based calibration
  (:func:`vsbc`, Yao et al. 2018, §4).
- :mod:`~pyro_vae.diagnostics.gradient_variance`: the mean, variance and signal-to-noise
  ratio of an estimator's gradient at fixed parameters (its function of the same name is
  reached through the module, whose name it shares).
- :mod:`~pyro_vae.diagnostics.report`: the files of ``pyro-vae diagnose RUN``
  (:func:`write_report`) and their figures.
- :mod:`~pyro_vae.diagnostics.draws`: the S draws from a guide replayed through the model
  that the others start from, and :func:`variational_guide`.

Every ArviZ import of the package is in :mod:`~pyro_vae.diagnostics.arviz_compat`, and
:func:`~pyro_vae.checks.check_count` refuses every bad count alike. ArviZ takes
seconds to import, so the names below load on first use: importing this package imports
none of its modules.
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULES = {
    "inference_data": (
        "FORMAT",
        "load_inference_data",
        "save_inference_data",
        "to_inference_data",
    ),
    "draws": ("variational_guide",),
    "psis": (
        "CONSTANT_NATS",
        "PSIS_MIN_SAMPLES",
        "ROUND_OFF_ULPS",
        "PointwiseKhat",
        "pareto_khat",
        "psis_khat",
        "psis_khat_per_datapoint",
    ),
    "calibration": ("VSBCResult", "symmetry_test", "vsbc", "vsbc_with"),
    "loo": ("loo_approximate_posterior",),
    "report": ("plot_khat", "write_report", "write_summaries"),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}
_WHERE["az"] = "arviz_compat"  # ArviZ itself, as the single-module package offered it


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


__all__ = sorted(name for names in _MODULES.values() for name in names)
