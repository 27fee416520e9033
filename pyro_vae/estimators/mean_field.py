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

A closed-form KL is weighed once, by the guide site's scale and mask (Pyro's choice). A
latent whose model site is weighed otherwise (``poutine.scale`` or ``poutine.mask`` on
the model's site alone) has the term s_p E_q log p(z) − s_q E_q log q(z), which is no
multiple of a KL: that site's term is taken by Monte Carlo at the draw, as for a pair
without a closed form (Pyro's KL dropped the model's scale: −6.90 where the closed form
is −4.56). Free bits, which hold a KL at λ, refuse such a site.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.util import check_fully_reparametrized, is_validation_enabled
from torch.distributions import kl_divergence

from pyro_vae.estimators.base import RefusesMaskMismatches
from pyro_vae.estimators.capabilities import Capabilities
from pyro_vae.estimators.path_gradients import refuse_unreparameterized_factor
from pyro_vae.latent_dims import point_mass_log_density
from pyro_vae.objectives import check_free_bits, check_free_bits_groups, free_bits_traces


class MeanFieldELBO(RefusesMaskMismatches, TraceMeanField_ELBO):
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

    def loss(self, model, guide, *args, **kwargs) -> float:
        """−ELBO (with ``free_bits``, −the free-bits objective), a float as Pyro's ``loss``
        (tester EL: with ``free_bits`` it was a 0-dim tensor)."""
        value = super().loss(model, guide, *args, **kwargs)
        return float(value) if self.free_bits is not None else value

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        _refuse_unreparameterized(guide_trace)
        _refuse_unmarked_guide_only_sites(model_trace, guide_trace)
        unequal = _unequally_weighed(model_trace, guide_trace)
        if self.free_bits is None:
            loss, surrogate = super()._differentiable_loss_particle(model_trace, guide_trace)
            # Pyro's KL(Delta(v) ‖ p) = −log p(v) leaves out the Delta's log_density (an
            # autoguide's log-Jacobian): counted here, as closed_form_kl counts it (tester R);
            # a site weighed unequally gets its Monte Carlo term in place of Pyro's KL
            missing = _point_mass_log_densities(model_trace, guide_trace, skip=unequal)
            missing = missing + _monte_carlo_shift(model_trace, guide_trace, unequal)
            if torch.is_tensor(missing):
                shift = missing.detach() if torch.is_tensor(loss) else missing.item()
                loss, surrogate = loss + shift, surrogate + missing
            return loss, surrogate
        if unequal:
            name, model_weight, guide_weight = unequal[0]
            raise ValueError(
                f"free_bits: {self.free_bits!r} with latent site {name!r} weighed {model_weight} "
                f"in the model and {guide_weight} in the guide (poutine.scale or poutine.mask "
                "on one side only): its term is then no KL to hold at λ; weigh both sites "
                "alike, or use analytic-kl without free_bits, or trace"
            )
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


def _unequally_weighed(model_trace, guide_trace) -> list[tuple[str, str, str]]:
    """The latent sites whose model and guide sites differ in scale or mask, each with the
    two weights described (``"by scale 0.5, mask None"``)."""
    unequal = []
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        guide_site = guide_trace.nodes[name]
        if not all(_same(site[key], guide_site[key]) for key in ("scale", "mask")):
            unequal.append((name, _weight(site), _weight(guide_site)))
    return unequal


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if not (torch.is_tensor(a) or torch.is_tensor(b)):
        return a == b
    on = (a if torch.is_tensor(a) else b).device  # a float made there, not on the default
    a, b = torch.as_tensor(a, device=on), torch.as_tensor(b, device=on)
    try:
        return bool((a == b.to(a.device)).all())
    except RuntimeError:  # shapes that do not broadcast
        return False


def _weight(site: dict) -> str:
    scale, mask = site["scale"], site["mask"]
    scale = scale.tolist() if torch.is_tensor(scale) and scale.numel() <= 4 else scale
    mask = mask.tolist() if torch.is_tensor(mask) and mask.numel() <= 4 else mask
    return f"by scale {scale}, mask {mask}"


def _monte_carlo_shift(model_trace, guide_trace, unequal) -> torch.Tensor | float:
    """What turns Pyro's term −s_q KL(q ‖ p) of each site in ``unequal`` into its Monte
    Carlo term s_p log p(z) − s_q log q(z) at the draw (each scaled and masked by its own
    site), as a shift of the loss; 0.0 where no such site has a closed form (Pyro then took
    the Monte Carlo term itself)."""
    shift = 0.0
    for name, _, _ in unequal:
        model_site, guide_site = model_trace.nodes[name], guide_trace.nodes[name]
        try:
            kl = kl_divergence(guide_site["fn"], model_site["fn"])
        except NotImplementedError:
            continue
        kl = scale_and_mask(kl, guide_site["scale"], guide_site["mask"])
        batch = guide_site["fn"].batch_shape  # Pyro counts a constant KL once per element
        pyro_term = -(kl.sum() if torch.is_tensor(kl) else kl * torch.Size(batch).numel())
        log_q = guide_site["score_parts"].entropy_term.sum()
        shift = shift + pyro_term - (model_site["log_prob_sum"] - log_q)
    return shift


def _point_mass_log_densities(model_trace, guide_trace, skip=()) -> torch.Tensor | float:
    """Σ over the model's latent sites of the guide's point-mass ``log_density``, scaled and
    masked as Pyro scales each site's KL (0.0 where no guide site is a Delta carrying one).
    The sites in ``skip`` are left out: their Monte Carlo term holds it already."""
    skipped = {name for name, _, _ in skip}
    total = 0.0
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or name in skipped:
            continue
        guide_site = guide_trace.nodes[name]
        log_density = point_mass_log_density(guide_site["fn"])
        if torch.is_tensor(log_density) and not is_identically_zero(log_density):
            scaled = scale_and_mask(log_density, guide_site["scale"], guide_site["mask"])
            total = total + scaled.sum()
    return total


def _refuse_unmarked_guide_only_sites(model_trace, guide_trace) -> None:
    """Pyro's class takes a guide site the model lacks only when it is marked auxiliary,
    and asserts it bare (``AssertionError('')``: tester AW); this names the site and the
    ways out.

    Raises:
        ValueError: a sample site of the guide is not in the model nor marked auxiliary.
    """
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or name in model_trace.nodes:
            continue
        if not site["infer"].get("is_auxiliary"):
            raise ValueError(
                f"guide site {name!r} is not a site of the model; the analytic-kl estimator "
                "(Pyro's TraceMeanField_ELBO) takes a guide-only site only marked auxiliary, "
                f"pyro.sample({name!r}, fn, infer={{'is_auxiliary': True}}), and counts its "
                "−log q; or use trace, which counts it unmarked"
            )


def _refuse_unreparameterized(guide_trace) -> None:
    """Pyro's class raises a bare ``NotImplementedError`` (and only with validation on);
    this names the site and what to use instead.

    Raises:
        ValueError: a latent site of the guide has no reparameterized sampler.
    """
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample":
            refuse_unreparameterized_factor(name, site, "the analytic-kl estimator")
        if site["type"] == "sample" and not site["is_observed"] and not site["fn"].has_rsample:
            raise ValueError(
                f"guide site {name!r} ({type(site['fn']).__name__}) is not reparameterizable; "
                "the analytic-kl estimator (Pyro's TraceMeanField_ELBO) needs every guide "
                "site reparameterized. Use enum to sum a discrete site out, or score"
            )
