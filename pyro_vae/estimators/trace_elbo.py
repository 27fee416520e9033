"""The ``trace`` estimator: Pyro's ``Trace_ELBO`` with a choice of pathwise gradient.

For z = g(ε; φ) ~ q(z; φ) the single-sample ELBO estimate log p(x, z) − log q(z; φ) has
the gradient

    ∇_φ = [∂/∂z (log p(x, z) − log q(z; φ))] · ∂z/∂φ  −  ∂/∂φ log q(z; φ)|_z ,

a path term and a score term whose mean is zero. ``gradient="reparam"`` (the default) is
Pyro's ``Trace_ELBO`` unchanged: both terms for reparameterizable sites (Kingma & Welling
2013), score-function terms for the others. ``gradient="stl"`` drops the score term
("sticking the landing", Roeder, Wu & Duvenaud 2017): still unbiased, and when q equals
the posterior p(z | x) every draw's guide gradient is exactly zero, since log p(x, z) −
log q(z) is then the constant log p(x). Model parameters get the same gradient either way.
The score term is dropped by scoring each guide site with its distribution's parameters
detached (:mod:`pyro_vae.estimators.path_gradients`), inside the per-particle surrogate
that Pyro's ``loss_and_grads`` and ``differentiable_loss`` (and a recording,
:class:`~pyro_vae.estimators.compiled.CompiledELBO`) all go through.
"""

from __future__ import annotations

from typing import Any

from pyro.infer import Trace_ELBO

from pyro_vae.estimators.capabilities import Capabilities
from pyro_vae.estimators.path_gradients import (
    check_gradient,
    refuse_dependent_sites,
    refuse_unreparameterized,
    stopped_guide_trace,
)
from pyro_vae.traces import sample_sites


class TraceELBO(Trace_ELBO):
    """Pyro's ``Trace_ELBO`` (the same arguments) with ``gradient``: ``"reparam"`` (Pyro's
    estimate, bit for bit) or ``"stl"`` (sticking the landing; see the module docstring).

    Raises:
        ValueError: ``gradient`` is neither; with ``"stl"``, a guide site that is not
            reparameterizable, or one drawn from a distribution that depends on another
            guide site's draw (at the first loss).
    """

    def __init__(self, *args: Any, gradient: str = "reparam", **kwargs: Any) -> None:
        self.gradient = check_gradient(gradient, ("reparam", "stl"), "trace")
        super().__init__(*args, **kwargs)

    @property
    def capabilities(self) -> Capabilities:
        """Pyro's ``Trace_ELBO``'s; with ``"stl"`` every guide site must be reparameterizable."""
        return Capabilities(
            keeps_state=False,
            needs_reparameterized=self.gradient == "stl",
            per_datapoint=False,
            recordable=True,
        )

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        # Pyro's hook for one particle's (loss, surrogate loss); the loss is Pyro's own.
        loss, surrogate = super()._differentiable_loss_particle(model_trace, guide_trace)
        if self.gradient == "reparam":
            return loss, surrogate
        refuse_unreparameterized(guide_trace, "trace", self.gradient)
        refuse_dependent_sites(guide_trace, "trace", self.gradient)
        log_p = sum(s["log_prob_sum"] for s in model_trace.nodes.values() if s["type"] == "sample")
        stopped = stopped_guide_trace(guide_trace)
        log_q = sum(site["log_prob_sum"] for site in sample_sites(stopped).values())
        return loss, -(log_p - log_q)
