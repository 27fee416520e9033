"""Pathwise gradients with the guide's parameters held still inside log q.

A reparameterized draw z = g(ε; φ) makes log q(z; φ) depend on φ twice: through the draw
(the path) and directly (the score, ∂/∂φ log q(z; φ) at fixed z). The score term has mean
zero, so it can be dropped without bias from the ELBO's gradient (Roeder, Wu & Duvenaud
2017, "sticking the landing", STL), and when q equals the posterior the remaining path term
is exactly zero for every draw. Tucker, Lawson, Gu & Maddison (2018, "Doubly
reparameterized gradient estimators for Monte Carlo objectives", eq. 6-8) write it as
log q(z; stop_gradient(φ)): the density's parameters detached, the draw z not.

:func:`stopped_log_prob` evaluates exactly that for any Pyro guide site: the site's
distribution is copied with every tensor inside it detached (Pyro's public
``pyro.distributions.util.detach``; flows' transforms included) and scored at the site's
own value, which keeps its graph back to φ. A distribution whose ``log_prob`` needs the
inverse of its transform (a flow) computes it there, since the detached copy has no cache.

Detaching each site's parameters is the paper's stop-gradient only when no guide site's
distribution depends on another latent's draw (amortized encoders, flows, mean-field
guides): for q(z₁) q(z₂ | z₁) it would also cut the path from z₁ through q(z₂ | z₁)'s
parameters and bias the gradient, so such guides are refused
(:func:`refuse_dependent_sites`).
"""

from __future__ import annotations

import torch
from pyro.distributions.util import detach, scale_and_mask
from pyro.poutine import Trace

from pyro_vae.traces import (
    base_distribution,
    drawn_factor,
    is_point_mass,
    sample_sites,
    stack_values,
)

# The choices of ``gradient``: what the pathwise gradient of log q keeps.
GRADIENTS = {
    "reparam": "the full pathwise gradient (Kingma & Welling 2013; Burda et al. 2015)",
    "stl": "its path part only, sticking the landing (Roeder et al. 2017)",
    "dreg": "doubly reparameterized (Tucker et al. 2018)",
}


def check_gradient(gradient: object, allowed: tuple[str, ...], estimator: str) -> str:
    """``gradient`` if it is one of ``allowed``; else a ``ValueError`` naming the choices.

    Raises:
        ValueError: ``gradient`` is not a string in ``allowed``.
    """
    if isinstance(gradient, str) and gradient in allowed:
        return gradient
    choices = "; ".join(f"{g!r}: {GRADIENTS[g]}" for g in allowed)
    extra = ""
    if gradient == "dreg":
        extra = " (DReG reweights a multi-sample bound's particles: use the iwae estimator)"
    raise ValueError(
        f"gradient: {gradient!r} is not one of {estimator}'s gradients{extra}; expected {choices}"
    )


def base_name(fn) -> str:
    """The class name of ``fn`` under its wrappers (``Independent``, ``MaskedDistribution``)."""
    return type(base_distribution(fn)).__name__


def refuse_unreparameterized_factor(name: str, site: dict, estimator: str) -> None:
    """Refuse a guide's ``pyro.factor(..., has_rsample=False)``, which Pyro's docs give to
    a factor that arose from draws without a path (discrete ones): a pathwise-only
    ``estimator`` would leave out its score (after tester FE: it was taken as pathwise,
    silently). Pyro itself refuses a guide factor that does not say.

    Raises:
        ValueError: naming the site and the two ways out."""
    if drawn_factor(site):
        raise ValueError(
            f"guide site {name!r} is a pyro.factor with has_rsample=False, which Pyro "
            f"gives a factor that arose from draws without a path (discrete ones); {estimator} "
            "keeps pathwise gradients only, which would leave out its score. Give "
            "has_rsample=True where it arose from reparameterized draws (a Jacobian), or "
            "use the score or vimco estimator"
        )


def refuse_unreparameterized(guide_trace: Trace, estimator: str, gradient: str) -> None:
    """Raise unless every latent site of the guide is reparameterizable (an observed one
    is no draw: tester CW, a guide that observes a label was refused).

    Raises:
        ValueError: naming the first site that is not and its distribution.
    """
    for name, site in sample_sites(guide_trace).items():
        refuse_unreparameterized_factor(name, site, f"{estimator} with gradient={gradient!r}")
        # an observed guide site (a label the guide conditions on, obs=y) is no draw
        if not site["fn"].has_rsample and not site["is_observed"]:
            raise ValueError(
                f"guide site {name!r} ({base_name(site['fn'])}) is not reparameterizable; "
                f"{estimator} with gradient={gradient!r} keeps only the pathwise part of the "
                "gradient, which this site has not. Use gradient='reparam' (score-function "
                "terms where a site needs them) or the score estimator for discrete latents."
            )


def refuse_dependent_sites(guide_trace: Trace, estimator: str, gradient: str) -> None:
    """Raise when a guide site's draw depends on another guide site's draw.

    Detaching each site's distribution parameters would then also cut the path from the
    earlier draw through the later site's parameters: a biased gradient, not the paper's
    stop-gradient on φ alone (see the module docstring). Only guides with two or more
    latent sites that carry gradients are checked: one backward pass over the guide's
    sampling graph, never through the model.

    A point mass (``Delta``: an autoguide's constrained value, ``pyro.deterministic``) is
    not drawn from parameters to detach: its log q is kept whole (:func:`stopped_log_prob`),
    so its dependence on an earlier draw is let through (Pyro's ``AutoNormal``, a
    constrained value of an unconstrained draw, was refused: tester M).

    Raises:
        ValueError: naming both sites.
    """
    sites = [(n, s["value"], s["fn"]) for n, s in sample_sites(guide_trace).items()]
    points = {n for n, _, fn in sites if is_point_mass(fn)}
    sites = [(n, v) for n, v, _ in sites if torch.is_tensor(v) and v.requires_grad]
    for j in range(1, len(sites)):
        later, value = sites[j]
        if later in points:  # its log q is left undetached (stopped_log_prob)
            continue
        earlier = [v for _, v in sites[:j]]
        found = torch.autograd.grad(value.sum(), earlier, allow_unused=True, retain_graph=True)
        for (name, _), grad in zip(sites[:j], found, strict=True):
            if grad is not None:
                raise ValueError(
                    f"guide site {later!r} is drawn from a distribution that depends on guide "
                    f"site {name!r}; {estimator} with gradient={gradient!r} detaches each "
                    "site's distribution parameters, which would also cut that dependence and "
                    "bias the gradient. Use gradient='reparam' for hierarchical guides."
                )


def stopped_log_prob(site: dict) -> torch.Tensor:
    """log q(z; stop_gradient(φ)) of one guide site, unscaled and unmasked: the site's
    distribution with its tensors detached, scored at its value (whose graph is kept). A
    point mass (``Delta``) is left whole: its ``log_density`` (an autoguide's log-Jacobian
    of the constraining transform at an earlier draw) is a function of that draw's path,
    not of φ directly, and detaching it cut the path. So is an observed site (a guide's
    ``pyro.factor``): only a draw's score ∇_φ log q(z) has mean zero under q, and the
    factor's own gradient is part of the ELBO's.

    A site stacked from looped particles (:func:`pyro_vae.traces.stack_particles`) is
    scored with each particle's own distribution (``site["fns"]``) and stacked likewise.

    Returns:
        The site's batch-shaped log-density (particles first when stacked).
    """
    value = site["value"]
    if is_point_mass(site["fn"]) or site.get("is_observed"):  # its log_density (a log-Jacobian)
        # keeps its path; an observed site (pyro.factor in a guide) is no draw whose score
        # has mean zero: its whole gradient stays (tester FE: cut, a wrong gradient)
        log_q = site.get("unscaled_log_prob")
        return site["fn"].log_prob(value) if log_q is None else log_q
    if "fns" not in site:
        return detach(site["fn"]).log_prob(value)
    event_dim = site["fn"].event_dim
    batch_rank = value.dim() - event_dim - 1
    per_particle = [detach(fn).log_prob(value[k]) for k, fn in enumerate(site["fns"])]
    return stack_values(per_particle, batch_rank, 0)


def stopped_guide_trace(guide_trace: Trace) -> Trace:
    """A copy of ``guide_trace`` whose sample sites hold log q with the guide's parameters
    detached (:func:`stopped_log_prob`): ``unscaled_log_prob`` and ``log_prob`` (scaled and
    masked as Pyro scales them), ``log_prob_sum`` recomputed, ``score_parts`` dropped, and
    ``fn`` (``fns``) detached too, so that whatever rescores the copy (free bits' groups of
    dimensions) keeps the stop-gradient.
    Other sites and the original trace are left as they were."""
    copy = Trace()
    names = set(sample_sites(guide_trace))
    for name, site in guide_trace.nodes.items():
        if name not in names:
            copy.add_node(name, **site)
            continue
        unscaled = stopped_log_prob(site)
        new = dict(site, unscaled_log_prob=unscaled)
        new["log_prob"] = scale_and_mask(unscaled, site["scale"], site["mask"])
        new["log_prob_sum"] = new["log_prob"].sum()
        new["fn"] = detach(site["fn"])
        if "fns" in site:
            new["fns"] = [detach(fn) for fn in site["fns"]]
        new.pop("score_parts", None)
        copy.add_node(name, **new)
    return copy
