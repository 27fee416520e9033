"""Gradient estimators by name: each is a ``pyro.infer.ELBO``.

``get(name, **options)`` returns a fresh estimator; ``options`` go to its constructor
(for example ``num_particles=8``).

- ``trace``: Pyro's ``Trace_ELBO``, pathwise (reparameterization) gradients where a site
  allows them (Kingma & Welling 2013), score-function gradients elsewhere.
- ``analytic-kl``: Pyro's ``TraceMeanField_ELBO``, the same with KL(q ‖ p) in closed form
  where both are known (the lecture's −KL + E_q log p(x | θ), eq. 18.4).
- ``iwae``: :class:`IWAELBO`, the K-sample importance-weighted bound per datapoint
  (Burda et al. 2015); ``num_particles`` is K.
- ``enum``: Pyro's ``TraceEnum_ELBO``: model sites marked ``infer={"enumerate":
  "parallel"}`` that the guide does not sample are summed out exactly (mixture
  assignments, HMM states), the rest as ``trace``.
- ``tracegraph``: Pyro's ``TraceGraph_ELBO``, score-function gradients for
  non-reparameterizable sites with downstream-cost Rao-Blackwellization and the baselines
  a site requests in ``infer={"baseline": ...}`` (Schulman et al. 2015).
- ``score``: :class:`ScoreFunctionELBO`, REINFORCE for every guide site with a control
  variate: ``none``, ``ema``, ``leave-one-out`` or ``neural`` (NVIL).
- ``vimco``: :class:`VIMCO`, the K-sample bound of ``iwae`` with score-function gradients
  and per-sample leave-one-out baselines (Mnih & Rezende 2016), for discrete latents.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO

from pyro_vae.estimators.iwae import IWAELBO
from pyro_vae.estimators.score_function import CONTROL_VARIATES, ScoreFunctionELBO
from pyro_vae.estimators.variance import GradientStats, gradient_variance
from pyro_vae.estimators.vimco import VIMCO

_REGISTRY: dict[str, Callable[..., ELBO]] = {
    "trace": Trace_ELBO,
    "analytic-kl": TraceMeanField_ELBO,
    "enum": TraceEnum_ELBO,
    "iwae": IWAELBO,
    "tracegraph": TraceGraph_ELBO,
    "score": ScoreFunctionELBO,
    "vimco": VIMCO,
}


def names() -> list[str]:
    """The registered estimator names."""
    return sorted(_REGISTRY)


def get(name: str, **options: Any) -> ELBO:
    """A new estimator called ``name``, constructed with ``options``."""
    if name not in _REGISTRY:
        raise ValueError(f"estimator: {name!r} is not one of {', '.join(names())}")
    particles = options.get("num_particles", 1)
    if isinstance(particles, bool) or not isinstance(particles, int) or particles < 1:
        # Pyro's own ELBOs accept these and fail later, inside a step
        raise ValueError(f"num_particles: {particles!r} is not a positive integer")
    try:
        return _REGISTRY[name](**options)
    except TypeError as err:
        raise ValueError(f"estimator options {options} are not valid for {name!r}: {err}") from err


def parse(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name:key=value:key=value"`` -> (name, options); values are read as JSON if they can be.

    For example ``"score:control_variate=leave-one-out:num_particles=8"``.
    """
    import json

    name, *pairs = spec.split(":")
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"estimator: {pair!r} in {spec!r} is not key=value")
        try:
            options[key.replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.replace("-", "_")] = raw
    return name, options


__all__ = [
    "CONTROL_VARIATES",
    "IWAELBO",
    "GradientStats",
    "ScoreFunctionELBO",
    "VIMCO",
    "get",
    "gradient_variance",
    "names",
    "parse",
]
