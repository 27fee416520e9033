"""A guide that draws each latent site from a fixed distribution, and a fitted CAVI
estimator standing in for a guide.

Every function that takes a ``guide`` and reads only its draws (``elbo_estimate``, the
diagnostics of :mod:`pyro_vae.diagnostics`) passes it through :func:`as_guide`, so a fit
of :mod:`pyro_vae.cavi` (``AutoCAVI``, ``BayesianGaussianMixture``, …) can be given where a
Pyro guide is expected.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pyro


def variational_guide(distributions: Mapping[str, Any]) -> Callable[..., None]:
    """The guide q(z) = Π_site q_site(z_site) that draws each named site from a fixed
    distribution, e.g. a CAVI fit's ``variational_distributions()``; they stay readable
    as ``guide.distributions``.

    Raises:
        ValueError: ``distributions`` is empty.
    """
    if not distributions:
        raise ValueError("distributions: empty; expected {site name: pyro distribution}")
    items = dict(distributions)

    def guide(*args: Any, **kwargs: Any) -> None:
        for site, distribution in items.items():
            pyro.sample(site, distribution)

    guide.__name__ = f"variational_guide({', '.join(items)})"
    guide.distributions = items  # type: ignore[attr-defined]
    return guide


def as_guide(guide):
    """``guide``, or for a fitted :mod:`pyro_vae.cavi` estimator its own
    ``variational_guide()`` where it has one (``AutoCAVI``: joint where its q is, a block
    or a chain), else the :func:`variational_guide` of its ``variational_distributions()``
    (the product of the marginals: q itself under mean field)."""
    if callable(getattr(guide, "variational_guide", None)):
        return guide.variational_guide()
    if hasattr(guide, "variational_distributions"):
        return variational_guide(guide.variational_distributions())
    return guide
