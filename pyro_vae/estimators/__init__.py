"""Gradient estimators by name: each is a ``pyro.infer.ELBO``.

``get(name, **options)`` returns a fresh estimator; ``options`` go to its constructor
(for example ``num_particles=8``).

- ``trace``: Pyro's ``Trace_ELBO``, pathwise (reparameterization) gradients where a site
  allows them (Kingma & Welling 2013), score-function gradients elsewhere.
- ``analytic-kl``: Pyro's ``TraceMeanField_ELBO``, the same with KL(q ‖ p) in closed form
  where both are known (the lecture's −KL + E_q log p(x | θ), eq. 18.4).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

_REGISTRY: dict[str, Callable[..., ELBO]] = {
    "trace": Trace_ELBO,
    "analytic-kl": TraceMeanField_ELBO,
}


def names() -> list[str]:
    """The registered estimator names."""
    return sorted(_REGISTRY)


def get(name: str, **options: Any) -> ELBO:
    """A new estimator called ``name``, constructed with ``options``."""
    if name not in _REGISTRY:
        raise ValueError(f"estimator: {name!r} is not one of {', '.join(names())}")
    try:
        return _REGISTRY[name](**options)
    except TypeError as err:
        raise ValueError(f"estimator options {options} are not valid for {name!r}: {err}") from err


__all__ = ["get", "names"]
