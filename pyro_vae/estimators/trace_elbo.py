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

``free_bits=λ`` trains on the free-bits objective (Kingma et al. 2016;
:mod:`pyro_vae.objectives`): each latent site's Monte Carlo KL term log q − log p,
averaged over the minibatch, counts as max(λ, ·), decided per particle.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.infer import Trace_ELBO

from pyro_vae.estimators.base import RefusesMaskMismatches
from pyro_vae.estimators.capabilities import Capabilities
from pyro_vae.estimators.path_gradients import (
    check_gradient,
    refuse_dependent_sites,
    refuse_unreparameterized,
    stopped_guide_trace,
)
from pyro_vae.objectives import (
    check_free_bits,
    check_free_bits_groups,
    free_bits_traces,
    latent_groups,
    refuse_drawn_groups_of_many_elements,
)
from pyro_vae.traces import drawn_factor, sample_sites


def refuse_scored_guide_factors(guide_trace) -> None:
    """Refuse a guide's ``pyro.factor(..., has_rsample=False)`` under Pyro's ``Trace_ELBO``:
    Pyro scores it as part of log q but its learning signal (``_compute_log_r``) reads the
    guide's drawn sites only, leaving the factor's own term out, so every score-function
    term is biased (tester FH: a Bernoulli's logit read d(−ELBO)/dv 0.42 ± 0.02 where
    enumeration gives 1.15). ``score``, ``tracegraph`` and ``enum`` count it.

    Raises:
        ValueError: naming the site and the estimators that take it."""
    for name, site in sample_sites(guide_trace).items():
        if drawn_factor(site):
            raise ValueError(
                f"guide site {name!r} is a pyro.factor with has_rsample=False: Pyro's "
                "Trace_ELBO (the trace estimator) scores it as part of log q but leaves its "
                "term out of the score-function learning signal, a biased gradient; use the "
                "score, tracegraph or enum estimator, which count it, or has_rsample=True "
                "where it arose from reparameterized draws (a Jacobian)"
            )


class TraceELBO(RefusesMaskMismatches, Trace_ELBO):
    """Pyro's ``Trace_ELBO`` (the same arguments) with ``gradient``: ``"reparam"`` (Pyro's
    estimate, bit for bit) or ``"stl"`` (sticking the landing; see the module docstring),
    and ``free_bits``: λ nats per latent site, or ``None`` (the ELBO); ``free_bits_groups``
    splits each site into groups of its dimensions (:mod:`pyro_vae.objectives`).

    Raises:
        ValueError: ``gradient`` is neither, or ``free_bits`` is not a λ >= 0; with
            ``"stl"``, a guide site that is not reparameterizable, or one drawn from a
            distribution that depends on another guide site's draw (at the first loss); a
            guide's ``pyro.factor(..., has_rsample=False)`` (at the first loss; see
            :func:`refuse_scored_guide_factors`).
    """

    def __init__(
        self,
        *args: Any,
        gradient: str = "reparam",
        free_bits: float | None = None,
        free_bits_groups: int | str | None = None,
        **kwargs: Any,
    ) -> None:
        self.gradient = check_gradient(gradient, ("reparam", "stl"), "trace")
        self.free_bits = check_free_bits(free_bits)
        self.free_bits_groups = check_free_bits_groups(free_bits_groups, self.free_bits)
        if self.gradient == "stl" and self.free_bits is not None:
            raise ValueError(
                f"gradient: 'stl' with free_bits={self.free_bits!r}: sticking the landing drops "
                "the guide's direct term ∇_φ log q(z), whose mean is zero only where nothing "
                "decided by the draw multiplies it, and free bits keep a site's KL on the draws "
                "above λ only, so the gradient would be biased; use gradient='reparam', or "
                "analytic-kl, with free bits"
            )
        super().__init__(*args, **kwargs)

    def loss(self, model, guide, *args, **kwargs) -> float:
        """−ELBO (with ``free_bits``, −the free-bits objective), as Pyro's ``loss``."""
        if self.free_bits is None:
            return super().loss(model, guide, *args, **kwargs)
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

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
        refuse_scored_guide_factors(guide_trace)
        scored = (model_trace, guide_trace)
        if self.free_bits is not None:  # the floor in the guide's terms (score functions)
            groups = latent_groups(model_trace, guide_trace)
            refuse_drawn_groups_of_many_elements(guide_trace, groups, "trace")
            *scored, _, _ = free_bits_traces(
                model_trace, guide_trace, self.free_bits, groups=self.free_bits_groups,
                in_terms=True,
            )  # fmt: skip
        loss, surrogate = super()._differentiable_loss_particle(*scored)
        if self.gradient == "reparam":
            return loss, surrogate
        refuse_unreparameterized(guide_trace, "trace", self.gradient)
        refuse_dependent_sites(guide_trace, "trace", self.gradient)
        stopped = stopped_guide_trace(guide_trace)
        log_p = sum(s["log_prob_sum"] for s in model_trace.nodes.values() if s["type"] == "sample")
        log_q = sum(site["log_prob_sum"] for site in sample_sites(stopped).values())
        return loss, -(log_p - log_q)
