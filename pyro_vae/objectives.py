"""Training objectives other than the ELBO: a fixed β (β-VAE) and free bits.

With z the latents the guide draws (or sums, when the guide enumerates them) and x the
observations,

- **β-VAE** (Higgins et al. 2017): ELBO_β = E_q[log p(x | z)] − β · KL(q(z | x) ‖ p(z)),
  written per sample as log p(x | z) + β (log p(z) − log q(z | x)). It is applied by
  :class:`pyro_vae.annealing.ScaleLatents`, which multiplies the log-density scale of every
  latent site in model and guide by β; KL warm-up multiplies the same scale, so the two
  compose (β · warm-up(step)).
- **free bits** (Kingma et al. 2016, "Improved variational inference with inverse
  autoregressive flow", appendix C): the latents are split into groups j and the KL term
  of each contributes max(λ, E_{x∈M}[KL_j(x)]) instead of its KL, where the mean is over
  the minibatch M. By default a **group is a sample site** (all of its event dims): its KL
  per element of its plates (per datapoint, for a site in the per-datapoint plate),
  averaged over the minibatch's elements. While that average is below λ the group's KL
  adds the constant λ to the loss, so its gradient is exactly zero; above λ it is the
  usual KL. ``groups`` splits each site into K groups of its dimensions (K contiguous
  blocks of its flattened event dims; ``"dims"``: one group per dimension), as the paper
  does; each group then has its own λ. That needs a KL per dimension, so guide and prior
  must factorize over the site's dimensions (:mod:`pyro_vae.latent_dims`; flows,
  low-rank guides and mixture priors are refused).

:func:`free_bits_traces` does the second on a pair of traces that an estimator is about
to score: it decides, for each particle, which groups sit below λ, and returns copies of
the traces in which those groups' log-densities (log p(z_j | ·) in the model, log q(z_j |
·) in the guide) are multiplied by 0, together with the constant λ they contribute
instead. Score-function terms (the guide's ``score_parts.score_function`` and its
``unscaled_log_prob``) are kept: a frozen group's draw still carries the gradient of the
likelihood and of the other groups' terms that depend on it; only its own KL is dropped.
With K particles each particle's draw is decided on its own (the K-particle objective is
the mean of K single-draw free-bits objectives, as the ELBO estimate is of single-draw
ELBOs). The KL estimate is the one the estimator uses: log q − log p at the draw
(Monte Carlo), or the closed form where ``analytic=True`` and
``torch.distributions.kl_divergence`` knows the pair (``analytic-kl``). With β the
site's scale carries β, so the floor is β·λ, as in β · max(λ, KL).

The reported ELBO (validation, test) is never this objective: only training changes.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions.score_parts import ScoreParts
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.poutine import Trace

from pyro_vae.checks import as_real
from pyro_vae.latent_dims import (
    check_groups,
    closed_form_kl,
    group_count,
    per_dim_kl,
    per_dim_log_prob,
)
from pyro_vae.site_masks import counted_batch_elements, masks_inside_event
from pyro_vae.traces import PARTICLE_PLATES, sample_sites

__all__ = [
    "check_beta",
    "check_free_bits",
    "check_free_bits_groups",
    "free_bits_traces",
    "latent_groups",
    "refuse_drawn_groups_of_many_elements",
    "whole_group_cost",
]


def check_beta(beta: object, name: str = "beta") -> float:
    """``beta`` as a float if it is a finite number > 0.

    Raises:
        ValueError: naming ``name``, the value and what was expected.
    """
    number = as_real(beta)
    if number is None:
        raise ValueError(f"{name}: {beta!r} is not a number; expected a finite β > 0")
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name}: {beta!r} is not a finite β > 0 (1: the ELBO)")
    return number


def check_free_bits(free_bits: object, name: str = "free_bits") -> float | None:
    """``free_bits`` as a float (nats per group, ≥ 0), or ``None`` (off).

    Raises:
        ValueError: naming ``name``, the value and what was expected.
    """
    if free_bits is None:
        return None
    number = as_real(free_bits)
    if number is None:
        raise ValueError(f"{name}: {free_bits!r} is not a number of nats; expected λ >= 0 or None")
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{name}: {free_bits!r} is not a finite λ >= 0 (nats per latent group)")
    return number


def check_free_bits_groups(
    groups: object, free_bits: float | None, name: str = "free_bits_groups"
) -> int | str | None:
    """``groups`` (:func:`pyro_vae.latent_dims.check_groups`): ``None``, ``"dims"`` or a
    count K >= 1 of groups of dimensions per latent site.

    Raises:
        ValueError: naming ``name``: not one of those, or groups without ``free_bits``.
    """
    groups = check_groups(groups, name)
    if groups is not None and free_bits is None:
        raise ValueError(
            f"{name}: {groups!r} without free_bits; groups of dimensions are what free bits "
            "hold at λ, so give free_bits=λ too (or leave the groups out)"
        )
    return groups


def latent_groups(model_trace: Trace, guide_trace: Trace) -> list[str]:
    """The free-bits groups: the guide's sample sites that the model samples as latents
    (sites the model enumerates itself are summed into the likelihood, not a group)."""
    model_sites = sample_sites(model_trace)
    return [
        name
        for name in sample_sites(guide_trace)
        if name in model_sites and not model_sites[name]["is_observed"]
    ]


def whole_group_cost(site: dict, cost: torch.Tensor, rank: int) -> tuple[dict, torch.Tensor]:
    """A free-bits group's cost term (its prior's or guide's log-density, with the floor)
    summed over every dim but the particle dim, as a term of no plate: whether the group
    is frozen is decided by all its elements together (its KL summed over the minibatch),
    so every element's draw moves every element's term, and a score-function signal
    Rao-Blackwellized by plate element must count the whole group (tester BI: element by
    element, 39 standard errors off). ``(a site of the particle plate only, the cost)``."""
    frames = tuple(
        f for f in site["cond_indep_stack"] if f.vectorized and f.name in PARTICLE_PLATES
    )
    cost = cost.reshape((1,) * (rank - cost.dim()) + tuple(cost.shape))
    dims = [d for d in range(-rank, 0) if d not in {f.dim for f in frames} and cost.shape[d] > 1]
    return {"cond_indep_stack": frames}, cost.sum(dims, keepdim=True) if dims else cost


def refuse_drawn_groups_of_many_elements(guide_trace: Trace, groups, estimator: str) -> None:
    """Refuse free bits on a guide site drawn with a score function (not reparameterized,
    not enumerated) that has more than one element per particle, for an estimator whose
    score-function terms are Pyro's: they are Rao-Blackwellized by plate element, and the
    group's freeze, decided over all its elements, moves every element's term (see
    :func:`whole_group_cost`; tester BI: 5 to 35 standard errors off).

    Raises:
        ValueError: naming the site, its plates and the estimator that scores it whole."""
    for name in groups:
        site = guide_trace.nodes[name]
        parts = site.get("score_parts")
        enumerated = site["infer"].get("_enumerate_dim") is not None  # summed exactly
        if parts is None or is_identically_zero(parts.score_function) or enumerated:
            continue
        dim = _particle_dim(site)
        elements = site["fn"].batch_shape.numel()
        if dim is not None and len(site["fn"].batch_shape) >= -dim:
            elements //= site["fn"].batch_shape[dim]
        if elements > 1:
            plates = [f.name for f in site["cond_indep_stack"] if f.name not in PARTICLE_PLATES]
            raise ValueError(
                f"free_bits: guide site {name!r} is drawn with a score function "
                f"({type(site['fn']).__name__}, not reparameterized) and has {elements} "
                f"elements (plates {plates}); {estimator!r} scores each element's draw by "
                "that element's terms only, but free bits freeze the site by its KL over all "
                "its elements, so each draw moves the others' terms and the gradient would be "
                "biased; use the estimator 'score', which scores the site's terms whole"
            )


def _particle_dim(site: dict) -> int | None:
    for frame in site["cond_indep_stack"]:
        if frame.name in PARTICLE_PLATES and frame.vectorized:
            return frame.dim
    return None


def _per_particle(value: torch.Tensor, dim: int | None) -> torch.Tensor:
    """Σ of ``value`` over every dim but the particle ``dim``: ``[K]``, or ``[1]``, on
    ``value``'s device (``torch.as_tensor`` would move a tensor to the default device)."""
    if not torch.is_tensor(value):
        value = torch.as_tensor(value)
    if dim is None or value.dim() < -dim or value.shape[dim] == 1:
        return value.sum().reshape(1)
    return value.movedim(dim, 0).reshape(value.shape[dim], -1).sum(1)


def _group_kl(model_site: dict, guide_site: dict, analytic: bool) -> torch.Tensor:
    """The group's scaled and masked KL term per element (what the estimator subtracts)."""
    if analytic:
        try:
            kl = closed_form_kl(guide_site["fn"], model_site["fn"])
        except NotImplementedError:
            pass
        else:
            kl = scale_and_mask(kl, guide_site["scale"], guide_site["mask"])
            return kl.expand(guide_site["fn"].batch_shape) if torch.is_tensor(kl) else kl
    difference = guide_site["log_prob"] - model_site["log_prob"]
    if guide_site["infer"].get("_enumerate_dim") is not None:
        # summed exactly over the site's values (enum): Σ_z q(z) (log q(z) − log p(z))
        return guide_site["unscaled_log_prob"].detach().exp() * difference
    return difference


def free_bits_traces(
    model_trace: Trace,
    guide_trace: Trace,
    free_bits: float,
    analytic: bool = False,
    groups: int | str | None = None,
    in_terms: bool = False,
) -> tuple[Trace, Trace, torch.Tensor, dict[str, torch.Tensor]]:
    """Copies of the traces with each group below ``free_bits`` nats taken out (see the
    module docstring), the floor they contribute instead, and each site's closed-form
    or Monte Carlo KL term (for an estimator that subtracts KLs itself).

    Log-densities must have been computed (``compute_log_prob``; guide score parts where
    the estimator uses them). ``groups``: ``None`` (each site one group), ``"dims"`` or K
    groups of each site's dimensions (:mod:`pyro_vae.latent_dims`).

    ``in_terms``: for an estimator with score-function terms (a Monte Carlo KL, decided
    draw by draw), whose gradient must see the objective itself: a draw's frozen groups
    are decided by the draw, so the floor λ is part of its learning signal and a kept
    group's direct term −∇_φ log q(z) no longer has mean zero (tester BG: REINFORCE's
    gradient 38 standard errors off with both left out). The floor then goes into the
    guide sites' log-densities, λ · scale at each frozen element (detached, so only
    score-function terms read it), every guide site's entropy term becomes its kept log q
    (Pyro's ``Trace_ELBO`` takes the direct term of a site whose score is drawn from it
    there), and the ``floor`` returned is 0.

    Returns:
        ``(model_trace, guide_trace, floor, kept_kl)``: ``floor`` is Σ over particles and
        frozen groups of λ · m_j (m_j: the sum of the group's scales over its elements,
        N for a per-datapoint site of a minibatch, times β), a detached tensor to subtract
        from the particles' summed ELBO; ``kept_kl[name]`` the site's KL term per element,
        without its frozen groups.

    Raises:
        ValueError: with ``groups``, a K that does not divide a site's event size, or a
            site whose guide or prior does not factorize over its dimensions.
    """
    model_out, guide_out = _copy(model_trace), _copy(guide_trace)
    floor = None
    kept: dict[str, torch.Tensor] = {}
    for name in latent_groups(model_trace, guide_trace):
        model_site, guide_site = model_trace.nodes[name], guide_trace.nodes[name]
        dim = _particle_dim(guide_site)
        ones = torch.ones(guide_site["fn"].batch_shape, device=guide_site["value"].device)
        # every mask, poutine.mask's and a .mask of the distribution (tester DS's kind:
        # read from poutine.mask alone, a .mask's elements each took the floor λ)
        elements = scale_and_mask(ones, guide_site["scale"], counted_batch_elements(guide_site))
        weight = _per_particle(elements, dim)
        count = group_count(groups, guide_site["fn"].event_shape.numel(), name)
        if count > 1:
            term, kept[name] = _free_dim_groups(
                name,
                (model_site, guide_site),
                (model_out, guide_out),
                (free_bits, count, analytic),
                (weight, elements if in_terms else None),
            )
            if not in_terms:
                floor = term if floor is None else floor + term
            continue
        kl = _group_kl(model_site, guide_site, analytic)
        total = _per_particle(kl, dim)
        frozen = (total < free_bits * weight).detach()
        keep = (~frozen).to(total.dtype)
        if dim is not None and keep.numel() > 1:
            keep = keep.reshape((-1,) + (1,) * (-dim - 1))
        else:
            keep = keep.reshape(())
        kept[name] = kl * keep
        _scale_site(model_out.nodes[name], keep)
        _scale_site(guide_out.nodes[name], keep)
        if in_terms:
            _add_floor(guide_out.nodes[name], ((1 - keep) * free_bits * elements).detach())
            continue
        term = (frozen.to(total.dtype) * free_bits * weight).sum()
        floor = term if floor is None else floor + term
    if floor is None:  # no latent group: on the data's device, as the sums it is added to
        floor = torch.zeros((), device=_device_of(model_trace))
    return model_out, guide_out, floor.detach(), kept


def _add_floor(site: dict, floor: torch.Tensor) -> None:
    """Add ``floor`` (λ · scale at each frozen element, detached) to a guide site's
    log-density terms, and make its entropy term its log q (see ``in_terms``)."""
    log_prob = site["log_prob"] + floor
    site["log_prob"], site["log_prob_sum"] = log_prob, log_prob.sum()
    parts = site.get("score_parts")
    if parts is not None:
        site["score_parts"] = ScoreParts(parts.log_prob + floor, parts.score_function, log_prob)


def _device_of(trace: Trace) -> torch.device | None:
    """The device of the trace's first sample site's value (None: no site holds a tensor)."""
    for site in sample_sites(trace).values():
        if torch.is_tensor(site["value"]):
            return site["value"].device
    return None


def _free_dim_groups(name, sites, outs, setting, weights):
    """:func:`free_bits_traces` for one site split into ``count`` groups of its dimensions:
    the site's floor and kept KL; ``outs``' copies of the site hold only kept dimensions.
    ``weights``: (the site's weight per particle, its weight per element where the floor
    goes into the guide's terms (``in_terms``), else None)."""
    (model_site, guide_site), (free_bits, count, analytic) = sites, setting
    weight, elements = weights
    dim = _particle_dim(guide_site)
    if guide_site["infer"].get("_enumerate_dim") is not None:
        raise ValueError(
            f"free_bits_groups: latent site {name!r} is enumerated, and an enumerated site's "
            "values are not split into dimensions; use free_bits_groups=None"
        )
    if masks_inside_event(guide_site) or masks_inside_event(model_site):
        # the floor λ is owed per element and group, and such a mask leaves a group's
        # coordinates counted at some elements only: the one count per element froze
        # groups against a floor their masked coordinates paid (tester DU)
        raise ValueError(
            f"free_bits_groups: latent site {name!r} has a .mask inside its event (some "
            "coordinates of an element masked, others not), so a group of dimensions has no "
            "one count of elements to floor; mask whole elements (a .mask outside "
            ".to_event, or poutine.mask), or use free_bits_groups=None"
        )
    kl = per_dim_kl(model_site, guide_site, name, analytic)
    size = kl.shape[-1] // count
    kl_groups = kl.reshape(kl.shape[:-1] + (count, size)).sum(-1)
    if dim is None or kl_groups.dim() - 1 < -dim or kl_groups.shape[dim - 1] == 1:
        total = kl_groups.reshape(-1, count).sum(0, keepdim=True)
    else:
        total = kl_groups.movedim(dim - 1, 0).reshape(kl_groups.shape[dim - 1], -1, count).sum(1)
    frozen = (total < free_bits * weight.unsqueeze(-1)).detach()  # [particles, groups]
    keep = (~frozen).to(total.dtype).repeat_interleave(size, dim=-1)
    if dim is not None and keep.shape[0] > 1:
        keep = keep.reshape((keep.shape[0],) + (1,) * (-dim - 1) + (kl.shape[-1],))
    else:
        keep = keep.reshape(kl.shape[-1])
    term = (frozen.to(total.dtype) * free_bits * weight.unsqueeze(-1)).sum()
    for site, out, role in zip(sites, outs, ("prior", "guide"), strict=True):
        log_prob = (per_dim_log_prob(site, name, role) * keep).sum(-1)
        _set_log_prob(out.nodes[name], log_prob)
    if elements is not None:  # in_terms: λ · scale for each frozen group of the element
        frozen_groups = (count - keep.sum(-1) / size).detach()
        _add_floor(outs[1].nodes[name], frozen_groups * free_bits * elements)
    return term, (kl * keep).sum(-1)


def _set_log_prob(site: dict, log_prob: torch.Tensor) -> None:
    """Put ``log_prob`` (scaled, masked) in place of a site's log-density terms, not its
    score function; an entropy term (a reparameterized site's log q) becomes it too."""
    site["log_prob"] = log_prob
    site["log_prob_sum"] = log_prob.sum()
    parts = site.get("score_parts")
    if parts is not None:
        entropy = parts.entropy_term
        if not is_identically_zero(entropy):
            entropy = log_prob
        site["score_parts"] = ScoreParts(log_prob, parts.score_function, entropy)


def _copy(trace: Trace) -> Trace:
    out = Trace(graph_type=trace.graph_type)
    for name, site in trace.nodes.items():
        out.add_node(name, **{k: v for k, v in site.items() if k != "packed"})
    for attribute in ("plate_to_symbol", "symbol_to_dim"):
        if hasattr(trace, attribute):
            setattr(out, attribute, getattr(trace, attribute))
    return out


def _scale_site(site: dict, keep: torch.Tensor) -> None:
    """Multiply a site's log-density terms (not its score function) by ``keep``."""
    site["log_prob"] = site["log_prob"] * keep
    site["log_prob_sum"] = site["log_prob"].sum()
    parts = site.get("score_parts")
    if parts is not None:
        entropy = parts.entropy_term
        if not is_identically_zero(entropy):
            entropy = entropy * keep
        site["score_parts"] = ScoreParts(parts.log_prob * keep, parts.score_function, entropy)
