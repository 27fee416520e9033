"""The ``analytic-kl`` estimator: Pyro's ``TraceMeanField_ELBO`` with free bits.

    ELBO = E_q[log p(x | z)] − Σ_j KL(q(z_j | x) ‖ p(z_j))

with each site's KL in closed form where ``torch.distributions.kl_divergence`` knows the
pair, and log q − log p at the draw where it does not (the lecture's eq. 18.4). Without
``free_bits`` it is Pyro's class, with one term Pyro leaves out: a guide's point mass
(``AutoNormal``'s Delta at a constrained site) counts its ``log_density``, the
log-Jacobian of its draw (:func:`pyro_vae.latent_dims.closed_form_kl`). With
``free_bits=λ`` (Kingma et al. 2016; :mod:`pyro_vae.objectives`) each site's KL,
averaged over the minibatch, counts as max(λ, KL): the same closed form decides and is
subtracted, so a site below λ gets no gradient from its KL at all.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.util import check_fully_reparametrized, is_validation_enabled

from pyro_vae.estimators.capabilities import Capabilities
from pyro_vae.latent_dims import point_mass_log_density
from pyro_vae.objectives import check_free_bits, check_free_bits_groups, free_bits_traces


class MeanFieldELBO(TraceMeanField_ELBO):
    """Pyro's ``TraceMeanField_ELBO`` (the same arguments) and ``free_bits``: λ nats per
    latent site, or ``None`` (Pyro's estimate, with a point mass's ``log_density``
    counted); ``free_bits_groups`` splits each site into groups of its dimensions
    (:mod:`pyro_vae.objectives`), each with its closed-form KL per dimension.

    Raises:
        ValueError: ``free_bits`` is not a λ >= 0; (at the first loss) a guide site is not
            reparameterizable, naming it (Pyro raises a bare NotImplementedError).
    """

    capabilities = Capabilities(
        keeps_state=False, needs_reparameterized=True, per_datapoint=False, recordable=True
    )

    def __init__(
        self,
        *args: Any,
        free_bits: float | None = None,
        free_bits_groups: int | str | None = None,
        **kwargs: Any,
    ) -> None:
        self.free_bits = check_free_bits(free_bits)
        self.free_bits_groups = check_free_bits_groups(free_bits_groups, self.free_bits)
        super().__init__(*args, **kwargs)

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        _refuse_unreparameterized(guide_trace)
        if self.free_bits is None:
            loss, surrogate = super()._differentiable_loss_particle(model_trace, guide_trace)
            # Pyro's KL(Delta(v) ‖ p) = −log p(v) leaves out the Delta's log_density (an
            # autoguide's log-Jacobian): counted here, as closed_form_kl counts it (tester R)
            missing = _point_mass_log_densities(model_trace, guide_trace)
            if torch.is_tensor(missing):
                shift = missing.detach() if torch.is_tensor(loss) else missing.item()
                loss, surrogate = loss + shift, surrogate + missing
            return loss, surrogate
        model_trace, guide_trace, floor, kept = free_bits_traces(
            model_trace, guide_trace, self.free_bits, analytic=True, groups=self.free_bits_groups
        )
        elbo = torch.zeros((), device=floor.device)  # the floor's: on the traces' device
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            if site["is_observed"]:
                elbo = elbo + site["log_prob_sum"]
                continue
            if is_validation_enabled():
                check_fully_reparametrized(guide_trace.nodes[name])
            elbo = elbo - kept[name].sum()
        for name, site in guide_trace.nodes.items():  # auxiliary guide sites
            if site["type"] == "sample" and name not in model_trace.nodes:
                elbo = elbo - site["score_parts"].entropy_term.sum()
        return -elbo.detach() + floor, -elbo + floor


def _point_mass_log_densities(model_trace, guide_trace) -> torch.Tensor | float:
    """Σ over the model's latent sites of the guide's point-mass ``log_density``, scaled and
    masked as Pyro scales each site's KL (0.0 where no guide site is a Delta carrying one)."""
    total = 0.0
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        guide_site = guide_trace.nodes[name]
        log_density = point_mass_log_density(guide_site["fn"])
        if torch.is_tensor(log_density) and not is_identically_zero(log_density):
            scaled = scale_and_mask(log_density, guide_site["scale"], guide_site["mask"])
            total = total + scaled.sum()
    return total


def _refuse_unreparameterized(guide_trace) -> None:
    """Pyro's class raises a bare ``NotImplementedError`` (and only with validation on);
    this names the site and what to use instead.

    Raises:
        ValueError: a latent site of the guide has no reparameterized sampler.
    """
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"] and not site["fn"].has_rsample:
            raise ValueError(
                f"guide site {name!r} ({type(site['fn']).__name__}) is not reparameterizable; "
                "the analytic-kl estimator (Pyro's TraceMeanField_ELBO) needs every guide "
                "site reparameterized. Use enum to sum a discrete site out, or score"
            )
