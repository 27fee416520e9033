"""Traces of a model/guide pair with K particles, and the plate bookkeeping around them.

Estimators, evaluators and diagnostics all need the same thing: K draws z_k ~ q, each
replayed through the model, with every site's log-density laid out on one batch grid of
rank R whose leftmost dim (−R) indexes particles. Two ways to get there:

- **vectorized** (the fast default): one run of guide and model inside an outer
  ``pyro.plate`` of size K at dim −R, so every tensor carries the particle dim; the model
  must broadcast (no boolean-mask indexing, no ``.item()`` on a latent);
- **looped** (``vectorize_particles=False``, as Pyro's ELBOs offer): K separate runs,
  whose sites are then stacked along a new leftmost dim, giving the same layout. Slower,
  but any model that runs once runs this way.

:func:`particle_traces` tries the vectorized way and, when tracing under the particle
plate fails in a way the particle dim can cause and the looped way succeeds, keeps the
looped way with a warning that says why, so a model that cannot broadcast still gets an
answer rather than a traceback; an error of the model's own is raised as it is
(:func:`vectorized_or_looped`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.poutine import Trace
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing
from torch.nn.parameter import is_lazy

from pyro_vae.devices import forked_streams
from pyro_vae.draw_tracking import (
    LIBRARY_FRAMES,
    DrawTracker,
    TrackedDraw,
    buffers_set_aside,
    first_frame_outside,
)
from pyro_vae.interruptions import reraise_interruption
from pyro_vae.module_hooks import global_forward_pre_hook
from pyro_vae.site_masks import (
    counted_elements,
    sampling_log_prob,
    site_masks,
    spread,
    without_masks,
)

PARTICLES = "_particles"
# Plates that index particles, not data: ours, and the one Pyro's vectorized ELBOs add.
PARTICLE_PLATES = frozenset({PARTICLES, "num_particles_vectorized"})


class VectorizationWarning(UserWarning):
    """Vectorized particles failed for this model; particles are drawn one at a time."""


def sample_sites(trace: Trace) -> dict[str, dict]:
    """The trace's sample sites (subsample sites left out), by name."""
    return {n: s for n, s in prune_subsample_sites(trace).nodes.items() if s["type"] == "sample"}


def is_point_mass(fn) -> bool:
    """Whether ``fn`` is a ``Delta`` under its wrappers (``Independent``, ``expand``,
    ``MaskedDistribution``): a guide site that draws nothing (a MAP point, an autoguide's
    constrained value, ``pyro.deterministic``), whose value is its parameter. It has no
    score (∇ log q of a point mass is not a density's), so a score-function estimator gives
    it its pathwise gradient, and a stop-gradient on log q leaves its ``log_density`` (an
    autoguide's log-Jacobian, a function of an earlier draw) its path (tester M)."""
    return isinstance(base_distribution(fn), dist.Delta)


def base_distribution(fn):
    """``fn`` under its wrappers (``Independent``, ``expand``, ``MaskedDistribution``)."""
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


def drawn_factor(site: dict) -> bool:
    """Whether ``site`` is a ``pyro.factor(..., has_rsample=False)``: a factor that Pyro's
    docs give to a term from draws made without a path (discrete ones), which a
    score-function estimator scores as it scores such a draw's log q."""
    unit = isinstance(base_distribution(site["fn"]), dist.Unit)
    return bool(site.get("is_observed")) and unit and not site["fn"].has_rsample


def observed_without_score(site: dict) -> bool:
    """Whether ``site`` is a guide's observed sample site whose term's gradient is pathwise
    and which has no score: any ``obs=`` (a label the guide conditions on: nothing was drawn,
    whatever its distribution; tester FH: an observed Categorical's was scored, its mean
    gradient 0 under leave-one-out where it is softmax(v) − onehot(y)) and a
    ``pyro.factor(..., has_rsample=True)`` (a reparameterized draw's Jacobian; tester FE),
    but not :func:`drawn_factor`."""
    return bool(site.get("is_observed")) and not drawn_factor(site)


def refuse_unscored_guide_sites(model_trace: Trace, guide_trace: Trace) -> None:
    """Refuse guide draws that log p(x, z) − log q(z) cannot score as a bound (tester T):
    a latent the model does not have beside a model latent the guide draws from a density
    (:func:`refuse_guide_only_latents`), and elements one side masks off that the other
    scores (:func:`refuse_mask_mismatches`), and draws of sites the model observes
    (:func:`refuse_guide_draws_of_observed_sites`). What the evaluators and the
    importance-weighted estimators refuse; the single-sample estimators refuse the last two
    alone (a guide-only latent keeps Pyro's convention there, E[log p(x, z) − log q(z, u)],
    which does not grow with K).

    Raises:
        ValueError: naming the sites and the way out."""
    refuse_guide_draws_of_observed_sites(model_trace, guide_trace)  # first: it names the
    refuse_scored_guide_observations(guide_trace)  # cause where the pairing below would
    refuse_guide_only_latents(model_trace, guide_trace)  # blame an auxiliary draw
    refuse_mask_mismatches(model_trace, guide_trace)


def _guide_latents(model_trace: Trace, guide_trace: Trace) -> tuple[dict, list, list]:
    """(the guide's latent sites, the names of those the model lacks, the names of the
    model's latents the guide draws from a density, not a point mass)."""
    guide_sites = {n: s for n, s in sample_sites(guide_trace).items() if not s["is_observed"]}
    only = [n for n in guide_sites if n not in model_trace.nodes]
    drawn = [
        n for n in guide_sites if n in model_trace.nodes and not is_point_mass(guide_sites[n]["fn"])
    ]
    return guide_sites, only, drawn


def _passed_on_whole(only: list, guide_sites: dict, model_trace: Trace) -> bool:
    """Whether the guide-only latents ``only`` and the guide's point masses at model sites
    pair one to one: each u drawn from a continuous density it counts whole (not a point
    mass, no mask, the scale of the point mass that carries it, which has its model site's
    scale: 1, or a minibatch's N/B), its draw carried (:func:`_carries`) by exactly one other guide
    site, and that a point mass at a latent (not observed) model site: at u itself with a
    ``log_density`` of 0, or at u pushed through the bijection onto the model site's support
    with its change of variables as ``log_density`` (Pyro's ``AutoNormal`` at a constrained
    site; tester CW: one beside a hand-written draw was refused). Not so (tester AP, then
    tester AQ; each gave IWAE estimates 1.3 to 10 nats above log p(x)): u passed to two
    sites, or itself a point mass at a drawn latent (q on a line z₁ = z₂, no density of z);
    a point mass at an observed site (u a free auxiliary) or at another function of u
    (2u); one adding another log-density; u discrete (its point masses have no density),
    or its log q masked or scaled."""
    masses = {
        n for n, s in guide_sites.items() if n in model_trace.nodes and is_point_mass(s["fn"])
    }
    if len(masses) != len(only) or any(guide_sites[u]["value"].is_meta for u in only):
        return False  # a meta-device run has no values to pair
    for name in masses:
        node, mass = model_trace.nodes[name], guide_sites[name]
        if node["type"] != "sample" or node["is_observed"]:
            return False
        # the point mass counted whole too, at its model site's scale (tester CX: under
        # poutine.mask or poutine.scale, the change of variables it carries was dropped or
        # rescaled, 0.5 to 1.1 nats high); a minibatch's N/B scales both alike
        if site_masks(mass)[0] or not _same_scale(mass, node):
            return False
    for u in only:
        site = guide_sites[u]
        if is_point_mass(site["fn"]) or site["fn"].support.is_discrete or site_masks(site)[0]:
            return False
        same = [  # the sites whose value is u, or a mass at u's image T(u)
            n
            for n, s in guide_sites.items()
            if (n != u and _same_draw(site["value"], s["value"]))
            or (n in masses and _carries(site["value"], s, model_trace.nodes[n]))
        ]
        if len(same) != 1 or same[0] not in masses:
            return False
        mass = guide_sites[same[0]]
        if not _same_scale(site, mass):  # u's log q scaled as its image's (tester AQ)
            return False
        log_density = torch.as_tensor(_mass_log_density(mass))
        if _same_draw(site["value"], mass["value"]) and bool((log_density != 0).any()):
            return False
    return True


def _same_scale(site: dict, other: dict) -> bool:
    """Whether two sites' log-densities carry the same scale (``poutine.scale``, a
    minibatch's N/B)."""
    a, b = (torch.as_tensor(s.get("scale", 1.0)) for s in (site, other))
    try:
        return bool((a == b).all())
    except RuntimeError:  # shapes that do not broadcast
        return False


def _mass_log_density(mass: dict):
    """A point mass's log-density at its value, every particle's: its unscaled log_prob
    where computed (a stacked trace keeps one particle's distribution, and every
    particle's log_prob), else its ``log_density``."""
    if "unscaled_log_prob" in mass:
        return mass["unscaled_log_prob"]
    return base_distribution(mass["fn"]).log_density


def _carries(u: torch.Tensor, mass: dict, model_node: dict) -> bool:
    """Whether the point mass ``mass`` at a model site is u pushed through
    ``biject_to`` of the model site's support, its ``log_density`` that bijection's change of
    variables, −log |det ∂T(u)/∂u| summed as the point mass holds it (as Pyro's
    ``AutoNormal`` makes it): then q(u) times it is q's exact density of the site's value."""
    try:
        bijection = torch.distributions.biject_to(model_node["fn"].support)
        moved = bijection(u)
        jacobian = bijection.log_abs_det_jacobian(u, moved)
    except (NotImplementedError, RuntimeError, ValueError):
        return False
    value = mass["value"]
    if moved.numel() != value.numel() or not torch.allclose(
        moved.reshape(value.shape), value, rtol=1e-6, atol=1e-12
    ):
        return False
    log_density = torch.as_tensor(
        _mass_log_density(mass), dtype=jacobian.dtype, device=jacobian.device
    )  # a float log_density (0.0) on u's device, as allclose needs
    while jacobian.numel() > log_density.numel() and jacobian.dim():
        jacobian = jacobian.sum(-1)
    return jacobian.numel() == log_density.numel() and torch.allclose(
        -jacobian.reshape(log_density.shape), log_density, rtol=1e-5, atol=1e-6
    )


def _same_draw(u: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether a point mass's ``value`` is the draw ``u`` itself: the same elements in the
    same order (a particle trace lays u's batch out with a size-1 dim where the point mass
    has its plate's, [P, 1, D] against [P, D])."""
    return u.numel() == value.numel() and bool(torch.equal(u.reshape(value.shape), value))


def refuse_guide_only_latents(model_trace: Trace, guide_trace: Trace) -> None:
    """Refuse a latent the model does not have (the auxiliary u of a hierarchical guide
    q(z, u) = q(u) q(z | u)) beside a model latent the guide draws from a density:
    log p(x, z) − log q(z, u) then has mean ELBO(q(z)) + E_q H[q(u | z)], which is no bound
    on log p(x), and under IWAE's log-sum-exp it grows without limit as K rises (tester
    T's F3: log p(x) estimates rising with K to 2.5 nats above the exact value, with no
    word). An autoguide's auxiliary latent (``AutoMultivariateNormal``, ``AutoIAFNormal``)
    is let through: it reaches the model's sites by point masses whose ``log_density``
    makes log q(z) exact. So are latents each passed on whole as a point mass at one model
    latent, where every point mass the guide gives the model is one of those (AutoCAVI's
    q over a plate's elements jointly, :mod:`pyro_vae.cavi.fitted_guide`): each u is then
    its site's value, q(u | z) a point mass, its entropy 0, and log q(z) = log q(u) + the
    other sites' (:func:`_passed_on_whole`).

    Raises:
        ValueError: naming the sites and the way out."""
    guide_sites, only, drawn = _guide_latents(model_trace, guide_trace)
    if only and drawn and not _passed_on_whole(only, guide_sites, model_trace):
        raise ValueError(
            f"guide: it draws {only}, which the model does not have, beside the model's "
            f"{drawn[:3]}: q(z, u) is then not a density of the model's latents z alone, and "
            "log p(x, z) − log q(z, u) has mean ELBO(q(z)) + E_q H[q(u | z)] as an ELBO, "
            "which is no bound on log p(x), and under an importance-weighted bound grows "
            "without limit as K rises; sum u out of the guide (make q(z) one distribution), or "
            "add a reverse model r(u | z) to the model as an observed-free latent of its own "
            "(auxiliary-variable bounds: Agakov & Barber 2004; Ranganath et al. 2016)"
        )


def refuse_guide_draws_of_observed_sites(model_trace: Trace, guide_trace: Trace) -> None:
    """Refuse a guide that draws a site the model observes: the model scores its data there
    and never the guide's draw, so log q of that draw only enters log p(x, z) − log q(z) as
    noise (its mean, the guide's entropy there, shifts every estimate), and Pyro only warns
    "Found non-auxiliary vars in guide but not model" (tester CU: each estimator gave its
    own value, and ``score`` and ``vimco`` moved the guide's parameters of it).

    Raises:
        ValueError: naming the sites and the way out."""
    observed = [
        name
        for name, site in sample_sites(guide_trace).items()
        if not site["is_observed"]
        and not site["infer"].get("is_auxiliary")
        and name in model_trace.nodes
        and model_trace.nodes[name]["type"] == "sample"
        and model_trace.nodes[name]["is_observed"]
    ]
    if observed:
        raise ValueError(
            f"guide: it draws {observed}, which the model observes; a guide draws latent "
            "sites only (the model scores its data there, never the guide's draw): remove "
            "them from the guide, or leave them unobserved in the model to fit them as latents"
        )


def refuse_unscorable_draws(model_trace: Trace, guide_trace: Trace) -> None:
    """What no objective of log p(x, z) − log q(z) scores, whatever the estimator: a guide
    draw of a site the model observes (:func:`refuse_guide_draws_of_observed_sites`) and a
    latent whose elements one side masks off and the other scores
    (:func:`refuse_mask_mismatches`). Every estimator, ``fit`` and the evaluators call it.

    Raises:
        ValueError: naming the sites and the way out."""
    refuse_guide_draws_of_observed_sites(model_trace, guide_trace)
    refuse_mask_mismatches(model_trace, guide_trace)
    refuse_parameter_dependent_drawn_factors(guide_trace)


def refuse_parameter_dependent_drawn_factors(guide_trace: Trace) -> None:
    """Refuse a guide's ``pyro.factor(..., has_rsample=False)`` whose value depends on a
    parameter (reads one that requires grad; in a run without gradients nothing is seen,
    and the loss's value is the same however it is read). Its gradient has no one meaning:
    read as part of log q of draws without a path (Pyro's ``TraceEnum_ELBO``, DiCE) it
    differs from the gradient of the ELBO with it as a term, and each estimator took one
    reading or neither (tester FK, d(−ELBO)/dv: 1.05 and 0.38 by enumeration; ``enum``
    1.00, ``score`` 0.64, with a control variate −0.10, ``tracegraph`` −0.07). A factor of
    the draws alone is scored the same way by every estimator that takes it.

    Raises:
        ValueError: naming the site and the ways out."""
    for name, site in sample_sites(guide_trace).items():
        value = getattr(base_distribution(site["fn"]), "log_factor", None)
        if drawn_factor(site) and value is not None and value.requires_grad:
            raise ValueError(
                f"guide site {name!r} is a pyro.factor with has_rsample=False whose value "
                "depends on parameters (directly or through a reparameterized draw): its "
                "gradient has no one meaning (as part of log q of "
                "draws without a path, or as a term of the ELBO, the estimators disagree); "
                "write it from the draws alone, fold it into the draw's own distribution, or "
                "give has_rsample=True where it arose from reparameterized draws (a Jacobian)"
            )


def refuse_scored_guide_observations(guide_trace: Trace) -> None:
    """Refuse, where log p(x) is estimated, a guide that observes a site with a density
    (``pyro.sample("y", Bernoulli(logits=classifier(x)), obs=y)``, Pyro's semi-supervised
    VAE example): Pyro counts its log q(y | x) in the guide's log-density, so the weights
    are p(x, y, z) / (q(z | x, y) q(y | x)) and the estimate is of log p(x, y) − log q(y |
    x), above log p(x, y) where q(y | x) < 1 (tester CX: +0.42 nats over the exact
    log p(x, y)). A point mass at the observed value (log q = 0) scores nothing and is
    taken, as is a ``pyro.factor``, a term of log q. Training keeps Pyro's convention;
    only the evaluators refuse it.

    Raises:
        ValueError: naming the sites and the way out."""
    scored = []
    for name, site in sample_sites(guide_trace).items():
        # a pyro.factor is part of log q (a Jacobian), no observation (tester FK: fit
        # trained, then failed in the whole-data ELBO)
        if not site["is_observed"] or isinstance(base_distribution(site["fn"]), dist.Unit):
            continue
        log_q = site.get("log_prob")
        log_q = site["fn"].log_prob(site["value"]) if log_q is None else log_q
        if not log_q.is_meta and bool((log_q != 0).any()):  # (a meta run has no values)
            scored.append(name)
    if scored:
        raise ValueError(
            f"guide: it observes {scored} with a density, whose log q enters every weight: "
            "the estimate would be of log p(x, y) − log q(y | x), not of log p(x, y); give "
            "the guide the observed values as an argument it conditions on (observed in the "
            "model only), or observe them with a point mass (dist.Delta), which scores 0"
        )


def refuse_mask_mismatches(model_trace: Trace, guide_trace: Trace) -> None:
    """Refuse a latent whose elements one side masks off and the other scores, under any
    objective (each is an expectation of log p(x, z) − log q(z)):

    - elements the model masks off (``poutine.mask`` or a distribution's ``.mask(...)``,
      padding past a sequence's end) that the guide draws and scores: log q counts them
      and log p does not, so their entropy enters every estimate (tester T's F4: a padded
      HMM's log p(x) log 3 high per padded step; tester AK: ``AutoDiscreteMeanField`` on
      padded sequences, an ELBO log 2 high per padded step, above log p(x));
    - elements the guide masks off that the model scores: log p counts their prior and
      likelihood at a draw whose density log q leaves out, so the estimate is no bound and
      depends on the units of z (z ~ N(0, 1), x ~ N(z, 0.1²), q = N(0, 0.01²) masked: the
      ELBO of x = 0 came out 1.38 nats above log p(x), with no word);
    - an autoguide's image of an auxiliary draw for a latent the model masks in part
      (:func:`_refuse_auxiliary_images_of_masked_latents`).

    Read outside any ``make_fx`` recording (a compiled step's first call): a mask's
    values decide the refusal, and are not the step's arithmetic.

    Raises:
        ValueError: naming the site and the way out."""
    with disable_proxy_modes_tracing():
        _refuse_mask_mismatches(model_trace, guide_trace)


def _refuse_mask_mismatches(model_trace: Trace, guide_trace: Trace) -> None:
    guide_sites, only, drawn = _guide_latents(model_trace, guide_trace)
    for name in drawn:
        flat = guide_sites[name]["infer"].get("flat_prior") is True
        if not flat and _scored_where_masked_off(model_trace.nodes[name], guide_sites[name]):
            raise ValueError(
                f"guide: site {name!r} has elements the model masks off (poutine.mask, or "
                "its distribution's .mask(...)) that the guide draws and scores: log q counts "
                "them and log p does not, so their entropy enters the estimate, which is then "
                f"no bound on log p(x); mask the guide's {name!r} alike (poutine.mask around "
                "it, or .mask(...) on its distribution: either kind counts). Where the "
                "model's other terms still read those elements, its mask makes their prior "
                "flat and the estimate bounds the evidence under that flat prior: say so by "
                "drawing the guide's site with infer={'flat_prior': True} (AutoCAVI's "
                "fitted q does)"
            )
        if _scored_where_masked_off(guide_sites[name], model_trace.nodes[name]):
            raise ValueError(
                f"guide: site {name!r} has elements the guide masks off (poutine.mask, or "
                "its distribution's .mask(...)) that the model scores: log p counts them at "
                "draws whose density log q leaves out, so the estimate is no bound on log "
                f"p(x); mask the model's {name!r} alike, or take the mask off the guide's "
                "(q must score every element it draws that the model scores)"
            )
    _refuse_auxiliary_images_of_masked_latents(model_trace, guide_sites, only)


_AUXILIARY_MASK_MESSAGE = (
    "guide: the model masks off elements of {name!r} (poutine.mask, or .mask(...) "
    "on its distribution), and the guide gives it as the image of an auxiliary "
    "draw (an autoguide's), whose density scores every element, the masked-off "
    "ones too: the estimate is then no bound on log p(x) (it rises with K under "
    "IWAE); write a guide that draws {name!r} itself, masked as the model masks it, "
    "or put an AutoNormal under poutine.mask with the model's mask"
)


def _refuse_auxiliary_images_of_masked_latents(model_trace, guide_sites: dict, only) -> None:
    """Refuse an autoguide's image of an auxiliary draw (a ``Delta`` with a ``log_density``,
    beside auxiliary sites: ``AutoNormal``, ``AutoMultivariateNormal``, flows) for a latent
    the model masks in part: the auxiliary density scores every element, the masked-off
    ones too, and the ``Delta`` leaves nothing to mask (tester AJ: ``AutoNormal`` on padded
    sequences, IWAE at K = 1000 up to 8.1 nats above the exact log p(x), rising with K).
    ``AutoNormal``'s auxiliary of that latent alone (``<name>_unconstrained``) is read for
    its own masks: under ``poutine.mask`` with the model's mask it counts what log p counts,
    and is taken (refused as the others were: review of cb181f9..c795b70).

    Raises:
        ValueError: naming the site and the way out."""
    if not only:  # an autoguide's auxiliary, or a hand-written u (tester CX: one carried
        return  # by Delta(exp(u), log_density=−u) to a masked latent went unchecked)
    for name, site in guide_sites.items():
        if name not in model_trace.nodes or not _is_image_of_auxiliary(site["fn"]):
            continue
        model_site = model_trace.nodes[name]
        if not site_masks(model_site)[0]:
            continue
        own = guide_sites.get(f"{name}_unconstrained")  # AutoNormal's: one auxiliary a latent
        if own is not None and own["infer"].get("is_auxiliary"):
            if _scored_where_masked_off(model_site, own):
                raise ValueError(_AUXILIARY_MASK_MESSAGE.format(name=name))
            continue  # masked as the model masks it (poutine.mask around the autoguide)
        if not bool(counted_elements(model_site)[0].all()):
            raise ValueError(_AUXILIARY_MASK_MESSAGE.format(name=name))


def _is_image_of_auxiliary(fn) -> bool:
    """A ``Delta`` (under its wrappers) carrying a tensor ``log_density``: an autoguide's
    value of a model latent, made from its auxiliary draw (a MAP point's is the number 0)."""
    fn = base_distribution(fn)
    return isinstance(fn, dist.Delta) and torch.is_tensor(fn.log_density)


def _scored_where_masked_off(masking_site: dict, scoring_site: dict) -> bool:
    """Whether some element of a latent that ``masking_site`` masks off is scored by
    ``scoring_site`` (the model's and the guide's sites of one latent, either way round).

    Both kinds of mask count on both sides (:func:`counted_elements`): a mask the model
    puts on its prior by ``poutine.mask`` is matched by the guide's ``.mask(...)`` and the
    other way round. Where the two count at different grains (a ``.mask`` under
    ``.to_event`` against one on the whole event), the coarser is spread over the finer."""
    if not site_masks(masking_site)[0]:  # no tensor made: a meta-device run has no values
        return False
    masking_on, masking_event = counted_elements(masking_site)
    if bool(masking_on.all()):
        return False
    scoring_on, scoring_event = counted_elements(scoring_site)
    grain = min(masking_event, scoring_event)
    off = ~spread(masking_on, masking_event - grain)
    on = spread(scoring_on, scoring_event - grain)
    return bool((off & on).any())


class PointMassWarning(UserWarning):
    """A guide puts a point mass on a continuous latent: the numbers are not bounds."""


def point_mass_latents(model_trace: Trace, guide_trace: Trace, again: Trace) -> list[str]:
    """The latent sites of continuous support in the model that the guide draws from a
    point mass (``Delta``: a MAP estimate, ``AutoDelta``). Pyro scores a point mass's
    value 0, which is no density over a continuous z, so an ELBO or IWAE with one is log
    p(x, z*) at the point and may exceed log p(x), and its importance ratios are constant
    (k̂ = −∞ would call q exact) (tester O: 0.656 nats above the exact log p(x_n) on every
    datapoint). A point mass on a discrete latent is a proper q (its log q = 0 is right).

    ``again``: a second run of the guide. A ``Delta`` whose value differs between the two
    is the image of a draw (``AutoNormal``'s constrained value of its ``_unconstrained``
    draw, with its log-Jacobian), with a density, and is not counted; one that repeats is
    a point mass, whichever autoguide of an ``AutoGuideList`` it comes from (tester Q: a
    rule by the order of the sites missed ``AutoDelta`` after ``AutoNormal``)."""
    model_sites, repeated = sample_sites(model_trace), sample_sites(again)
    found = []
    for name, site in sample_sites(guide_trace).items():
        model_site = model_sites.get(name)
        if site["is_observed"] or model_site is None or model_site["is_observed"]:
            continue
        if not is_point_mass(site["fn"]) or name not in repeated:
            continue
        support = getattr(model_site["fn"], "support", None)
        if getattr(support, "is_discrete", False):
            continue
        value, other = site["value"], repeated[name]["value"]
        if torch.is_tensor(value) and torch.is_tensor(other) and torch.equal(value, other):
            found.append(name)
    return found


def point_masses_of(model, guide, args: tuple, kwargs: dict) -> list[str]:
    """:func:`point_mass_latents` of two runs of the pair, outside the random streams."""
    with forked_streams(), torch.no_grad():
        model_tr, guide_tr = run_pair(model, guide, args, kwargs)
        _, again = run_pair(model, guide, args, kwargs)
    return point_mass_latents(model_tr, guide_tr, again)


def point_mass_message(names: list[str]) -> str:
    """What :func:`point_mass_latents`' sites do to a bound, in one sentence."""
    return (
        f"it draws the continuous latent site(s) {names} from a point mass (Delta: "
        "a MAP estimate, AutoDelta), whose log q = 0 is no density, so an ELBO or IWAE "
        "here is log p(x, z*) at the point, not a bound on log p(x) (it may exceed it), and "
        "the importance ratios are constant in those sites"
    )


def sample_sites_where(trace: Trace, keep: Callable[[str, dict], bool]) -> Trace:
    """A trace of ``trace``'s sample sites (subsample sites left out) for which
    ``keep(name, site)`` holds, in their order: a part of a run to score alone."""
    out = Trace()
    for name, site in sample_sites(trace).items():
        if keep(name, site):
            out.add_node(name, **site)
    return out


def plate_nesting(*traces: Trace) -> int:
    """How many batch dims the traces' vectorized plates use (Pyro's ``max_plate_nesting``)."""
    nesting = 0
    for trace in traces:
        for site in sample_sites(trace).values():
            nesting = max([nesting, *(-f.dim for f in site["cond_indep_stack"] if f.vectorized)])
    return nesting


def full_rank(value, rank: int) -> torch.Tensor:
    """``value`` with singleton dims prepended up to ``rank`` dims (a batch-shape tensor)."""
    if not torch.is_tensor(value):
        value = torch.as_tensor(value)
    return value.reshape((1,) * (rank - value.dim()) + tuple(value.shape))


def run_pair(
    model, guide, args: tuple, kwargs: dict, particles: tuple[int, int] | None = None
) -> tuple[Trace, Trace]:
    """One draw from the guide and the model replayed on it (blocked, so nothing escapes).

    ``particles=(K, dim)`` runs both inside a particle plate of size K at ``dim``.
    """
    with poutine.block(), contextlib.ExitStack() as stack:
        if particles is not None:  # on the data's device: the default may be another
            on = next((a.device for a in (*args, *kwargs.values()) if torch.is_tensor(a)), None)
            plate = pyro.plate(PARTICLES, particles[0], dim=particles[1], device=on)
            stack.enter_context(plate)
        guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args, **kwargs)
    return model_tr, guide_tr


def stack_particles(pairs: list[tuple[Trace, Trace]], rank: int) -> tuple[Trace, Trace]:
    """K looped (model, guide) trace pairs as one pair laid out like a vectorized run.

    Each sample site's ``value``, ``log_prob``, ``unscaled_log_prob`` and tensor ``mask``
    (and, for a guide draw under ``.mask``, its unmasked log q, ``sampling_log_prob``)
    are brought to the full batch rank R − 1 and stacked along a new leftmost dim (−R), and
    a particle frame is added to its ``cond_indep_stack``; ``log_prob_sum`` is recomputed,
    ``score_parts`` dropped; ``fn`` is the first particle's and ``fns`` lists them all.
    Log-densities must have been computed (``compute_log_prob``).

    Raises:
        ValueError: the particles visited different sites (the model's structure depends
            on the draw), so they cannot share one layout.
    """
    frame = CondIndepStackFrame(PARTICLES, -rank, len(pairs), 0, len(pairs))
    return tuple(_stack_traces([pair[i] for pair in pairs], rank, frame, i == 1) for i in (0, 1))


def _stack_traces(
    traces: list[Trace], rank: int, frame: CondIndepStackFrame, guide: bool = False
) -> Trace:
    first = traces[0]
    names = list(sample_sites(first))
    for trace in traces[1:]:
        if list(sample_sites(trace)) != names:
            raise ValueError(
                f"particles visited different sample sites ({names} and "
                f"{list(sample_sites(trace))}); the model's structure depends on the draw, so "
                "particles cannot be stacked"
            )
    stacked = Trace()
    for name, site in first.nodes.items():
        if site["type"] != "sample" or name not in names:
            stacked.add_node(name, **site)
            continue
        sites = [trace.nodes[name] for trace in traces]
        new = dict(site)
        event_dim = _stacked_event_dim(site)
        new["value"] = stack_values([s["value"] for s in sites], rank - 1, event_dim)
        new["fns"] = [s["fn"] for s in sites]
        for key in ("log_prob", "unscaled_log_prob"):
            if key in site:
                new[key] = stack_values([s[key] for s in sites], rank - 1, 0)
        if guide and not site["is_observed"] and without_masks(site["fn"]) is not site["fn"]:
            # each particle's own unmasked log q (``fn`` is the first's; tester DS); the
            # guide's alone (a model's masked elements may hold values its prior refuses)
            log_qs = [sampling_log_prob(s) for s in sites]
            new["sampling_log_prob"] = stack_values(log_qs, rank - 1, 0)
        # per-particle caches would stand for the whole stack: recompute or drop them
        new.pop("score_parts", None)
        if "log_prob_sum" in site:
            new["log_prob_sum"] = new["log_prob"].sum()
        if torch.is_tensor(site["mask"]):
            new["mask"] = stack_values([s["mask"] for s in sites], rank - 1, 0)
        new["cond_indep_stack"] = (*site["cond_indep_stack"], frame)
        stacked.add_node(name, **new)
    return stacked


def _stacked_event_dim(site: dict) -> int:
    """The event dims of a site's value, right of its plates' dims. A
    ``pyro.deterministic`` site's ``Delta`` takes every dim of its value as an event dim,
    the plates' too (Pyro's default ``event_dim = value.ndim``): stacked as such, a value
    per datapoint came out with the plate at size 1 and an event dim of the data's size,
    and ``to_inference_data`` filled 5 of its 6 rows with NaN (tester O). Its event dims are
    those left of no plate."""
    event_dim = site["fn"].event_dim
    if not site["infer"].get("_deterministic", False) or not torch.is_tensor(site["value"]):
        return event_dim
    plated = max((-f.dim for f in site["cond_indep_stack"] if f.vectorized), default=0)
    return max(min(event_dim, site["value"].dim() - plated), 0)


def stack_values(values: list, batch_rank: int, event_dim: int) -> torch.Tensor:
    """Per-particle tensors (batch dims then ``event_dim`` event dims) stacked along a new
    leftmost dim, their batch dims first brought to ``batch_rank``."""
    shaped = []
    for v in values:
        v = v if torch.is_tensor(v) else torch.as_tensor(v)
        batch = v.dim() - event_dim
        shaped.append(v.reshape((1,) * (batch_rank - batch) + tuple(v.shape)))
    return torch.stack(torch.broadcast_tensors(*shaped))


def vectorize_for(guide, vectorize: bool | None) -> bool | None:
    """``vectorize``, or False where it is None (auto) and ``guide`` says it draws one
    particle per run (``guide.vectorizable = False``: ``ConditionalCAVIGuide``, which fits
    q*(c | u) for each draw), so no vectorized run is tried and warned about first."""
    if vectorize is None and getattr(guide, "vectorizable", True) is False:
        return False
    return vectorize


#: What a particle dim can make a model or guide raise: torch's shape and scalar errors
#: (``RuntimeError``: sizes that do not broadcast, ``.item()`` of a draw), Pyro's and the
#: model's own shape checks (``ValueError``, ``AssertionError``), boolean-mask and
#: positional indexing (``IndexError``), a tensor where a number was taken (``TypeError``).
VECTORIZATION_ERRORS = (RuntimeError, ValueError, TypeError, IndexError, AssertionError)

#: Pyro's refusal of a run whose plates lie deeper than the ``max_plate_nesting`` it was
#: given (``pyro.util.check_site_shape``): the model's own plates, which a loop has too.
PLATE_STACK_OVERFLOW = "plate stack overflow"


def vectorization_can_cause(error: BaseException) -> bool:
    """Whether running under the particle plate can be what raised ``error``: one of
    :data:`VECTORIZATION_ERRORS`, and not Pyro's plate stack overflow. A ``KeyError``,
    ``AttributeError``, ``ZeroDivisionError``, a file not found or a nesting too small for
    the model's own plates would be raised by every particle of a loop as well, and so
    would running out of memory."""
    if not isinstance(error, VECTORIZATION_ERRORS) or isinstance(error, torch.OutOfMemoryError):
        return False
    # torch's CPU allocator names its failure only in words: a loop of the same draws needs
    # the same memory, kept trace by trace (tester CR: 10⁸ draws ran on, looped, for ever)
    return PLATE_STACK_OVERFLOW not in str(error) and "can't allocate memory" not in str(error)


def vectorized_or_looped(
    vectorize: bool | None, vectorized: Callable, looped: Callable, what: str, particles: int
) -> tuple[Any, bool]:
    """``vectorized()``, or ``looped()``: the one fallback rule for particles.

    ``vectorize=True`` runs only ``vectorized()``, ``False`` only ``looped()``; ``None``
    runs ``vectorized()`` and, when it raises an error the particle dim can cause
    (:func:`vectorization_can_cause`) and ``looped()`` then works, keeps the looped result
    with a :class:`VectorizationWarning` naming ``what`` and the error. Any other error is
    raised as it is, at once, without the loop or the warning (too small a
    ``max_plate_nesting`` sent a run to the loop, whose first step returned a number
    blaming vectorization and whose later steps raised "plate stack overflow": builder K's
    K2). Where the loop fails too the failure is the model's own (a ``ValueError`` of its
    own code, say): the loop's error is raised alone, not as raised "during handling" of
    the vectorized one, and without the warning.

    Returns:
        ``(result, whether it was vectorized)``.

    Raises:
        Whatever ``vectorized()`` raises with ``vectorize=True`` or that the particle dim
        cannot cause; whatever ``looped()`` raises otherwise.
    """
    if vectorize is False:
        return looped(), False
    # the loop draws what it would have drawn without the failed attempt before it: a
    # resumed fit's validation, which tried the vectorized run again, drew otherwise than
    # the uninterrupted fit's, which had stopped trying (tester BE: a BatchNorm model's
    # resume was not exact from its first validation on)
    before = _random_state()
    try:
        with _buffers_put_back_on_failure(vectorize is None):
            return vectorized(), True
    except Exception as err:
        reraise_interruption(err)
        if vectorize or not vectorization_can_cause(err):
            raise
        # the error's first line: Pyro appends the whole trace's shape table (25 lines for
        # a small hierarchical model, three quarters of a diagnostics run's output: tester 23)
        why = f"{type(err).__name__}: {_first_line(err)}"
    # out of the except block: a loop that fails too raises its own error, alone
    _set_random_state(before)
    result = looped()
    warnings.warn(
        f"{what}: the model and guide could not run under vectorized particles ({why}); "
        f"drawing the {particles} particles one at a time instead (vectorize_particles=False), "
        "which gives the same estimates more slowly",
        VectorizationWarning,
        stacklevel=3,
    )
    return result, False


def _first_line(err: BaseException) -> str:
    """``err``'s first line, and the line after it where Pyro's wrapper ends there ("Error
    while computing score_parts at site 'z':", the cause on the next line: an ``Empirical``
    guide's "``value.shape`` must be torch.Size([])", which the warning left out, DI)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":") and lines[1] != "Trace Shapes:":
        return f"{lines[0]} {lines[1]}"
    return lines[0] if lines else ""


@contextlib.contextmanager
def _buffers_put_back_on_failure(active: bool):
    """Where ``active``, every buffer of each ``nn.Module`` called in the block is put back
    if the block raises: a failed vectorized attempt is no step, and the loop after it
    must start where a loop alone would have (tester DG: a ``BatchNorm`` counted the
    discarded attempt's batch, 5 updates where the loop alone made 4)."""
    if not active:
        yield
        return
    saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(module, _inputs) -> None:
        for buffer in module.buffers():  # submodules' too (see buffers_kept)
            if id(buffer) not in saved and not is_lazy(buffer):
                saved[id(buffer)] = (buffer, buffer.detach().clone())

    handle = global_forward_pre_hook(keep)
    try:
        yield
    except BaseException:
        with torch.no_grad():
            for buffer, value in saved.values():
                if buffer.shape == value.shape and not torch.equal(buffer, value):
                    buffer.copy_(value)
        raise
    finally:
        handle.remove()


def check_vectorized_pair(
    model, guide, args, kwargs, num_particles: int, rank: int, insisted: bool
) -> None:
    """Draw the pair once under a particle plate of ``num_particles`` at dim −``rank``
    (every site drawn, a site marked for enumeration too) and check that run
    (:func:`check_vectorized`, its subsamples pinned), for an ELBO whose own vectorized
    run is out of reach: Pyro's ``TraceEnum_ELBO``, which ``elbo_estimate`` and ``enum``
    run (tester DG: neither was checked, ``elbo_estimate`` 55 standard errors off with no
    word). Nothing is drawn from the caller's random streams and no buffer moves; a pair
    that cannot be drawn this way (it needs its enumeration) is left unchecked.

    Raises:
        ValueError: as :func:`check_vectorized`."""
    try:
        with forked_streams(), torch.no_grad(), buffers_kept():
            run = _pinned_vectorized_run(model, guide, args, kwargs, num_particles, rank)
    except Exception as err:  # noqa: BLE001 (drawn, not enumerated, it cannot run)
        reraise_interruption(err)
        return
    check_vectorized(*run, rank, args, kwargs, pinned=True, insisted=insisted, enumerated=True)


def _pinned_vectorized_run(model, guide, args, kwargs, num_particles: int, rank: int) -> tuple:
    """``(model, guide, model_trace, guide_trace)``: the pair wrapped to draw one set of
    subsamples (:class:`SharedSubsamples`), so that the check's plain runs draw this run's
    again (tester DG: a model subsampling its own plate skipped every check, and its
    particles shared a branch), and its traces of one run under a particle plate of
    ``num_particles`` at dim −``rank``, log-densities computed."""
    shared = SharedSubsamples()
    model, guide = shared(model), shared(guide)
    model_tr, guide_tr = run_pair(model, guide, args, kwargs, (num_particles, -rank))
    return model, guide, _finished(model_tr), _finished(guide_tr)


def _random_state() -> dict[str, Any]:
    """The random streams a run of model and guide draws from: Pyro's (torch's CPU
    generator, numpy's and Python's: ``pyro.util.get_rng_state``) and, where CUDA has
    started, each GPU's."""
    state = {"pyro": pyro.util.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_random_state(state: dict[str, Any]) -> None:
    """Put back a :func:`_random_state`."""
    pyro.util.set_rng_state(state["pyro"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def particle_traces(
    model,
    guide,
    args: tuple,
    kwargs: dict,
    num_particles: int,
    nesting: int,
    vectorize: bool | None = None,
) -> tuple[Trace, Trace, bool]:
    """Model and guide traces of K = ``num_particles`` draws, particles at dim −(nesting+1).

    Log-densities are computed and subsample sites pruned. ``vectorize``: ``True`` one run
    under a particle plate, ``False`` K runs stacked (:func:`stack_particles`), ``None``
    vectorized unless that fails and the looped way works (:func:`vectorized_or_looped`),
    or looped for a guide that draws one particle per run (:func:`vectorize_for`). A
    vectorized run that scores wrong is drawn looped (:func:`_check_broadcast`,
    :func:`_agrees_with_a_plain_run`).

    Returns:
        ``(model_trace, guide_trace, vectorized)``.
    """
    rank = nesting + 1
    vectorize = vectorize_for(guide, vectorize)

    def vectorized() -> tuple[Trace, Trace]:
        run = _pinned_vectorized_run(model, guide, args, kwargs, num_particles, rank)
        check_vectorized(*run, rank, args, kwargs, pinned=True, insisted=vectorize is True)
        return run[2], run[3]

    (model_tr, guide_tr), was_vectorized = vectorized_or_looped(
        vectorize,
        vectorized,
        lambda: _looped(model, guide, args, kwargs, num_particles, rank),
        "particle traces",
        num_particles,
    )
    refuse_unscored_guide_sites(model_tr, guide_tr)
    return model_tr, guide_tr, was_vectorized


def _looped(model, guide, args, kwargs, num_particles: int, rank: int) -> tuple[Trace, Trace]:
    """K pairs drawn one at a time, on one subsample of each subsampling plate
    (:class:`SharedSubsamples`)."""
    shared, pairs = SharedSubsamples(), []
    for _ in range(num_particles):
        model_tr, guide_tr = run_pair(shared(model), shared(guide), args, kwargs)
        pairs.append((_finished(model_tr), _finished(guide_tr)))
    return stack_particles(pairs, rank)


class SharedSubsamples(Messenger):
    """Every run under it draws the first run's subsample of each subsampling plate
    (``pyro.plate(..., subsample_size=)``), as the particles of a vectorized run share
    one. Particles drawn one at a time must: a bound that averages weights over particles
    (IWAE, VIMCO) has to weigh the same datapoints. Drawn anew in each run, a looped IWAE
    bound mixed weights of different datapoints, and its mean came out 11.6 nats above
    E[L_K] and 1.9 above log p(x) (tester M). Wrap the model and the guide in the same
    instance (``shared(model)``, ``shared(guide)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.indices: dict[str, Any] = {}

    def _pyro_sample(self, msg) -> None:
        if site_is_subsample(msg) and msg["name"] in self.indices:
            msg["value"] = self.indices[msg["name"]]
            msg["done"] = True

    def _pyro_post_sample(self, msg) -> None:
        if site_is_subsample(msg):
            self.indices.setdefault(msg["name"], msg["value"])


def check_vectorized(
    model,
    guide,
    model_tr: Trace,
    guide_tr: Trace,
    rank: int,
    args,
    kwargs,
    pinned=False,
    insisted=False,
    enumerated=False,
):
    """Raise ValueError unless the vectorized traces (particles at dim −``rank``, each site's
    log-density computed) are what K plain runs would give: every log-density has the
    plates' shape (:func:`_check_broadcast`), the last particle scores as a plain run at its
    values does (:func:`_agrees_with_a_plain_run`), and neither side reads a draw's value
    into Python (:func:`_check_python_reads`; only a warning where the caller ``insisted``
    on vectorized particles, ``vectorize_particles=True``). The plain runs draw nothing from
    the caller's random streams (``fork_rng``): a check leaves a seeded run's draws as they
    were; and while a step is recorded (``make_fx``, see
    :mod:`pyro_vae.estimators.compiled`) they are left out of the recording. ``pinned``:
    ``model`` and ``guide`` draw the vectorized run's subsamples again
    (:class:`SharedSubsamples`), so a minibatch is checked too."""
    with forked_streams(), disable_proxy_modes_tracing():
        sides = [("model", model, model_tr), ("guide", guide, guide_tr)]
        lasts = [_last_particle(trace, rank, pinned) for _, _, trace in sides]
        for (_, fn, trace), last in zip(sides, lasts, strict=True):
            _check_broadcast(trace, rank)
            _agrees_with_a_plain_run(fn, trace, last, rank, args, kwargs)
        for (side, fn, trace), last in zip(sides, lasts, strict=True):
            _check_python_reads(side, fn, trace, last, args, kwargs, insisted, enumerated)


@contextlib.contextmanager
def buffers_kept(roots=()):
    """Put back, on leaving, every buffer of each ``nn.Module`` called meanwhile, wherever
    it lives (an attribute, a closure, a ``pyro.module``), and of the modules ``roots``
    (the pair's model and guide objects, where the caller knows them: one holding a Pyro
    BatchNorm transform that no called module holds, tester DI): a check's runs are not training
    steps, and a ``BatchNorm`` in training mode moved its running statistics at each
    (tester Q). A global forward pre-hook (torch's ``register_module_forward_pre_hook``)
    copies a module's buffers before its first call.

    A lazy module's buffers (``LazyBatchNorm1d``'s) do not exist yet at its first call:
    its own pre-hook makes them, after the global one (copying them raised ValueError,
    "Attempted to use an uninitialized parameter", on the first run of any model holding
    one). Torch's lazy modules with buffers are its norm layers, whose buffers are made
    as ``reset_running_stats`` leaves them: that is called on leaving. A lazy module of
    another kind with buffers keeps what the block's runs left in them.

    Yields ``{module: its training flag at its first call}`` for every module called in
    the block (through ``__call__``), filled as they are called."""
    saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    made: dict[int, torch.nn.Module] = {}  # lazy at their first call
    called: dict[torch.nn.Module, bool] = {}

    def keep(module, _inputs) -> None:
        called.setdefault(module, module.training)
        # its submodules' too: one used without its __call__ (Pyro's BatchNorm transform,
        # applied as a Transform) moves its buffers unseen by the hook (tester DH: a
        # resumed flow with one drifted from the uninterrupted run)
        for sub in module.modules():
            buffers = list(sub.buffers(recurse=False))
            if any(is_lazy(buffer) for buffer in buffers):
                made[id(sub)] = sub
                continue
            for buffer in buffers:
                if id(buffer) not in saved:
                    saved[id(buffer)] = (buffer, buffer.detach().clone())

    for root in roots:
        keep(root, ())
        called.pop(root)  # not called: no training flag to report
    handle = global_forward_pre_hook(keep)
    try:
        yield called
    finally:
        handle.remove()
        with torch.no_grad():
            for buffer, value in saved.values():
                # only where it moved: a copy bumps the buffer's version, and a graph that
                # saved it (an autoregressive flow's masks) then fails its backward pass
                if not torch.equal(buffer, value):
                    buffer.copy_(value)
        for module in made.values():
            reset = getattr(module, "reset_running_stats", None)
            if reset is not None and not any(map(is_lazy, module.buffers(recurse=False))):
                reset()


def _check_broadcast(trace: Trace, rank: int) -> None:
    """Raise ValueError unless every sample site's log-density in ``trace`` has, right of the
    particle dim, each plate's size at its dim and 1 at every dim no plate claims. Pyro's
    ``check_site_shape`` leaves a dim between plates unchecked, and under the particle
    plate every dim of the model is between plates: a model whose arithmetic broadcasts
    the particle dim into another (``Vindex(mu)[..., z]`` with ``mu`` plated and ``z``
    not gives an [S, S] log-density, summed as S² terms) put an ELBO estimate 2,800 nats
    off without an error. Such a trace raises ValueError here, so the particles are drawn
    one at a time instead (a model with a dim of its own outside any plate, which Pyro
    tolerates between plates, is drawn that way too: slower, and the same estimates)."""
    for site in trace.nodes.values():
        if site["type"] != "sample" or not torch.is_tensor(site.get("log_prob")):
            continue
        sizes = {f.dim: f.size for f in site["cond_indep_stack"] if f.vectorized}
        shape = site["log_prob"].shape
        for dim in range(-min(rank, len(shape)), 0):
            if shape[dim] not in (1, sizes.get(dim, 1)):
                raise ValueError(
                    f"site {site['name']!r}: log-density of shape {tuple(shape)} under the "
                    f"particle plate, where the plates allow {sizes.get(dim, 1)} at dim {dim}"
                )


def _agrees_with_a_plain_run(fn, trace: Trace, last: dict | None, rank: int, args, kwargs) -> None:
    """Raise ValueError unless ``fn`` run once, plainly, at the last particle's values of
    every sample site of the vectorized ``trace`` scores each site as that particle's
    slice of ``trace`` does (to 1e-5 of its size). Shapes cannot tell every broadcast
    wrong: ``Vindex(mu)[..., z]`` with ``mu`` and ``z`` in plates at one dim pairs draw s
    with datapoint s, and with as many draws as datapoints every shape was right and each
    draw's log p up to 3 nats off. A trace with a subsampling plate is left unchecked unless
    ``pinned`` (its indices would be drawn again in each run; tester Q: a minibatched fit
    trained unchecked), as is one of meta tensors, one whose conditioned plain run raises
    (nothing to compare with), and one whose plain runs at the same values disagree with
    each other: the model draws noise of its own (dropout in training mode), which no
    rerun reproduces (tester Q: a VAE with dropout was sent to the loop for good)."""
    sites = {n: s for n, s in trace.nodes.items() if s["type"] == "sample"}
    if last is None:
        return
    plains = []
    try:
        for _ in range(2):  # twice: a model with noise of its own cannot be checked this way
            # on copies of the buffers: a BatchNorm's statistics, copied back into, failed
            # the step's backward pass, which saved them (tester DI)
            with poutine.block(), torch.no_grad(), buffers_set_aside():
                plain = poutine.trace(poutine.condition(fn, data=last)).get_trace(*args, **kwargs)
            plain.compute_log_prob()
            plains.append(plain)
    except Exception as err:  # conditioned, it cannot run (a guide's own bookkeeping): no reference
        reraise_interruption(err)
        return
    plain, again = plains
    for name, site in plain.nodes.items():
        other = again.nodes.get(name, {}).get("log_prob")
        if site["type"] == "sample" and torch.is_tensor(site.get("log_prob")):
            if not torch.is_tensor(other) or not torch.equal(site["log_prob"], other):
                return
    names, scores = [], []  # per site: (vectorized, plain, size), read in one transfer
    for name, site in sites.items():
        if name not in plain.nodes or not torch.is_tensor(site.get("log_prob")):
            continue
        log_p, expected = site["log_prob"].detach(), plain.nodes[name]["log_prob"].detach()
        if log_p.is_meta or expected.is_meta:
            continue
        axis = log_p.dim() - rank
        sliced = log_p.select(axis, -1) if axis >= 0 else log_p
        names.append(name)
        scores.append(torch.stack([sliced.sum(), expected.sum(), expected.abs().sum() + 1]))
    if not scores:
        return
    for name, (got, plain_score, size) in zip(names, torch.stack(scores).tolist(), strict=True):
        if abs(got - plain_score) > 1e-5 * size:
            raise ValueError(
                f"site {name!r}: the vectorized run scores a draw {got:.6g} where a plain run "
                f"at its values scores {plain_score:.6g} (the model's arithmetic pairs the "
                "particle dim with one of its own)"
            )


def _last_particle(trace: Trace, rank: int, pinned: bool) -> dict[str, torch.Tensor] | None:
    """{site: its value in the last particle} of the vectorized ``trace``, for every sample
    site with the particle dim; None where a plain run cannot be compared with it: a
    subsampling plate not ``pinned`` (a plain run would draw other indices), or meta
    tensors (shapes only, the device tests': no values)."""
    sites = {n: s for n, s in trace.nodes.items() if s["type"] == "sample"}
    frames = [f for s in sites.values() for f in s["cond_indep_stack"]]
    if not pinned and any(f.full_size is not None and f.size < f.full_size for f in frames):
        return None
    if any(torch.is_tensor(s["value"]) and s["value"].is_meta for s in sites.values()):
        return None
    last = {}
    for name, site in sites.items():
        value, event_dim = site["value"], site["fn"].event_dim
        axis = value.dim() - event_dim - rank
        if not site_is_subsample(site) and axis >= 0:
            last[name] = value.select(axis, -1)
    return last


def _check_python_reads(
    side: str,
    fn,
    trace: Trace,
    last: dict | None,
    args,
    kwargs,
    insisted: bool,
    enumerated: bool = False,
) -> None:
    """Raise ValueError (warn, with a :class:`VectorizationWarning`, where ``insisted``) if ``fn``,
    run plainly at the last particle's values of the vectorized ``trace``, reads a draw's
    value into Python (``if z.sum() > 1:``, ``int(z)``, ``.item()``, a count of nonzero
    elements; :mod:`pyro_vae.draw_tracking`). One vectorized run reads one value for all K
    particles, and a branch on it sends every particle the way of their sum: a guide
    branching on ``z.sum() > 0.5`` put ``score``'s ELBO 115 standard errors above the exact
    one with no word (the kind tester DE found), where the plain-run comparison saw only the
    last particle, which took the common branch. An assert or a log line reads too, and
    decides nothing: the error's fallback loops over the particles (same estimates, slower),
    and the message says how to keep them vectorized. A run that cannot be tracked or raises
    is left unchecked, as :func:`_agrees_with_a_plain_run` leaves it."""
    if not last:
        return
    # ``enumerated``: a site marked for enumeration is drawn here, where TraceEnum_ELBO
    # gives every particle its whole support, and a read of it is no particle's (tester
    # DI); another estimator draws it per particle (tester DJ: skipped there, 99 standard
    # errors off)
    draws = {
        n for n in last
        if (not trace.nodes[n]["is_observed"] or trace.nodes[n]["infer"].get("_deterministic"))
        and not (enumerated and trace.nodes[n]["infer"].get("enumerate") is not None)
    }  # fmt: skip
    reads = _python_reads(fn, last, draws, args, kwargs)
    if not reads:
        return
    read = reads[0]
    names, where = ", ".join(map(repr, sorted(read.sites))), f" at {read.where}" * bool(read.where)
    what = (
        f"{side}: a value of draw {names} is written into a tensor the check cannot follow "
        f"({read.operation}{where}), so a read of it would go unseen"
        if read.kind == "write"
        else f"{side}: a value of draw {names} is read into Python ({read.operation}{where})"
    ) + ", and one vectorized run reads one value for all its particles"
    if not insisted:
        raise ValueError(
            f"{what}; if that read decides nothing drawn or scored (an assert, a log "
            "line), vectorize_particles=True (--vectorize-particles on) keeps the particles "
            "vectorized"
        )
    warnings.warn(
        f"{what}: wrong wherever it decides what is drawn or scored (an if, an index); "
        "vectorize_particles=False (--vectorize-particles off) draws the particles one at "
        "a time",
        VectorizationWarning,
        stacklevel=_user_stacklevel(),  # the user's call (tester DG: base.py, Pyro's elbo.py)
    )


def _user_stacklevel() -> int:
    """``warnings.warn``'s ``stacklevel`` for the innermost frame outside torch, Pyro and
    this package, counted from the function that calls this one (1 where all are)."""
    package = os.path.dirname(__file__) + os.sep
    frame, steps = first_frame_outside((*LIBRARY_FRAMES, package), sys._getframe(1))
    return steps + 1 if frame is not None else 1


def _python_reads(fn, values: dict, draws: set, args, kwargs) -> list:
    """The reads into Python (values, and shapes made from values; :class:`DrawRead`) of
    the ``draws`` by one run of ``fn`` conditioned on ``values``, and by the log-densities
    of its sites (tester DG: a distribution's own ``log_prob`` that branched on a draw went
    unseen), with every module in its own mode on copies of its buffers
    (:func:`~pyro_vae.draw_tracking.buffers_set_aside`); [] where the run cannot be
    tracked or raises. A write of a draw into a tensor that is not tracked
    (``loc[..., :2] = z``) counts: what is read from that tensor afterwards goes unseen
    (tester DJ: a mask filled so, then indexing, 99 standard errors off, once writes were
    let through)."""
    tracker = DrawTracker(tracked=lambda msg: msg["name"] in draws)
    try:
        with poutine.block(), torch.no_grad(), buffers_set_aside():
            trace = poutine.trace(tracker(poutine.condition(fn, data=values))).get_trace(
                *args, **kwargs
            )
            for name, site in trace.nodes.items():
                if site["type"] == "sample" and not site_is_subsample(site):
                    value = site["value"]
                    if name in draws:
                        value = TrackedDraw(value, frozenset({name}))
                    site["fn"].log_prob(value)
    except Exception as err:  # noqa: BLE001 (conditioned or tracked, it cannot run)
        reraise_interruption(err)
        return []
    finally:
        tracker.close()
    return tracker.reads


def _finished(trace: Trace) -> Trace:
    trace = prune_subsample_sites(trace)
    trace.compute_log_prob()
    return trace
