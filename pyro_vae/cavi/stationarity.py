"""Whether AutoCAVI's q is a fixed point by the model's own gradient, not the probed factors'.

At mean field's optimum the ELBO's gradient in each Normal factor's mean is zero, and that
gradient is E_q[∇_z log p(x, z)] (the entropy of a location family does not move with its
mean). It is estimated here with the model's own log-densities and autograd, at seeded
draws from q (through :func:`~pyro_vae.cavi.fitted_guide.fitted_guide`, so blocks, chains
and absent elements are drawn as q has them), independently of the factors the sweeps
used. Those are solved from probe points in float64; where the log-densities are large
where q puts its mass (data near 10⁶ under a prior at 0), the factors' coefficients can be
off by more than the rounding estimated for them, and the sweeps then settle at a fixed
point of the wrong factors (tester Y: a bound of −2.1e12 nats reported converged, its
evidence −82.7). :func:`mean_steps` gives, per Normal unit, the step of its mean that the
gradient asks for in q's own sds (|ḡ_i|·sd_i: at mean field's optimum of a Gaussian model q's
variance is the inverse of the ELBO's curvature in that mean, so this is the Newton step),
the same step in the sds of the model's own curvature along the gradient, |ḡ_i|/√κ with
κ = −E_q[uᵀ∇²log p u] for u the gradient's direction (a difference of the gradient
along u: the wrong factors can leave q's variance wrong too, and the step in q's sds
then small; a mean 1.5·10⁶ off with a q(μ) 10⁶ times too narrow asked for 0.96 of q's sds
and 3.5·10⁶ of the model's), and how many standard errors of the draws' average ḡ_i is
from zero.

Only for Normal units of one site; a unit with a factor autograd cannot run through (a
``.detach()``, a NumPy step) is named as not checked, and a model that raises at a draw of
q is not checked at all (None).
"""

from __future__ import annotations

import math

import pyro.poutine as poutine
import torch

from pyro_vae.cavi.probe_runs import is_factor, score_factors

#: Draws of q the gradient is averaged over.
DRAWS = 16


def mean_steps(
    model,
    args,
    kwargs,
    latents: dict,
    q: dict,
    guide,
    seed: int,
    blankets: dict,
    draws: int = DRAWS,
) -> tuple[dict[str, tuple[float, float, float]], dict[str, str]] | None:
    """({unit: (step, z, model step)}, {unit: why it is not checked}) for the single-site
    Normal units, each at its coordinate with the largest step of the two: ``step`` =
    |ḡ_i|·sd_i, the step along E_q[∇ log p(x, z)] in q's sds, ``model step`` = |ḡ_i|/√κ,
    in the sds of the model's curvature κ along the gradient (averaged over the draws; 0
    where it is not positive or autograd has no second derivative), and ``z`` = |ḡ_i| /
    se_i (inf where the draws agree exactly), ḡ_i averaged over ``draws`` seeded draws of
    ``guide`` (q as a Pyro guide).
    ``blankets``: {unit: the factor sites whose log-density mentions it} (the fit's
    ``markov_blankets_``): a unit one of whose factors carries no autograd graph there (a
    ``.detach()``, a NumPy step) is not checked, its gradient being its other factors'
    alone, and is named with that factor; the others are (tester AB: one detached factor
    had switched the whole check off). None where no unit is a single-site Normal, or the
    model raises at a draw of q. Torch's global random state is left as it was, and
    Python's and NumPy's are not used."""
    normal = {
        name: latent.sites[0]
        for name, latent in latents.items()
        if latent.family.name == "Normal" and len(latent.sites) == 1 and name in q
    }
    if not normal:
        return None
    grads, curvatures, unchecked = {name: [] for name in normal}, {name: [] for name in normal}, {}
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(seed)
        for _ in range(draws):
            drawn = _gradients(model, args, kwargs, guide, normal, blankets)
            if drawn is None:
                return None
            found, curved, graphless = drawn
            unchecked.update(graphless)
            for name, g in found.items():
                grads[name].append(g)
                curvatures[name].append(curved[name])
    steps = {}
    for name, gs in grads.items():
        if name in unchecked or not gs:
            continue
        g = torch.stack(gs)
        mean, se = g.mean(0), (g.var(0) / draws).sqrt()
        step = (mean.abs() * _variance(q[name]).sqrt()).flatten()
        known = [c for c in curvatures[name] if c is not None]
        kappa = sum(known) / len(known) if known else 0.0
        model_step = (mean.abs() / math.sqrt(kappa)).flatten() if kappa > 0 else 0 * step
        z = (mean.abs() / se).flatten()  # inf where se is 0 and the mean is not
        i = int(torch.maximum(step, model_step).argmax())
        steps[name] = (float(step[i]), float(z[i]), float(model_step[i]))
    return steps, unchecked


def _gradients(model, args, kwargs, guide, normal: dict, blankets: dict):
    """(∇_z log p(x, z) at one draw of ``guide`` for the units of ``normal`` {unit: site}
    whose blanket's factors all carry a graph, {unit: the curvature along the gradient's
    direction, :func:`_curvature`, or None}, {unit: a factor that does not carry a
    graph}); None where the model raises."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    values = {
        name: site["value"].detach()
        for name, site in guide_trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"]
    }
    try:
        found, graphless = _log_joint_gradients(model, args, kwargs, values, normal, blankets)
        curved = {
            name: _curvature(model, args, kwargs, values, normal[name], g)
            for name, g in found.items()
        }
    except (RuntimeError, ValueError):  # the model raises at a draw of q, or leaves
        return None  # autograd in a way the blankets do not show (.item() in a parameter)
    return found, curved, graphless


def _log_joint_gradients(model, args, kwargs, values: dict, normal: dict, blankets: dict):
    """({unit: ∇ log p(x, z) in the unit at ``values`` (site: value)} for the units of
    ``normal`` whose blanket's factors all carry a graph, {unit: a factor that does not})."""
    wanted = {name: values[site].clone().requires_grad_() for name, site in normal.items()}
    given = {**values, **{normal[name]: v for name, v in wanted.items()}}
    trace = poutine.trace(poutine.condition(model, data=given)).get_trace(*args, **kwargs)
    score_factors(trace)
    graphless = {}
    for name in normal:
        for site in blankets.get(name, ()):
            if site in trace.nodes and not trace.nodes[site]["log_prob"].requires_grad:
                graphless.setdefault(name, site)
    checked = {name: v for name, v in wanted.items() if name not in graphless}
    if not checked:
        return {}, graphless
    total = sum(site["log_prob"].sum() for site in trace.nodes.values() if is_factor(site))
    found = torch.autograd.grad(total, list(checked.values()), allow_unused=True)
    return {
        name: torch.zeros_like(v) if g is None else g.detach()
        for (name, v), g in zip(checked.items(), found, strict=True)
    }, graphless


#: The finite difference's step along the gradient's direction, in the unit's own units: a
#: unit's log-density given the others is quadratic (its factors are conjugate to it, as
#: AutoCAVI checked), so the difference of gradients is exact for any step but rounding.
_STEP = 1.0


def _curvature(model, args, kwargs, values: dict, site: str, g: torch.Tensor) -> float | None:
    """κ = −uᵀ∇²log p u along the unit vector u of the gradient ``g`` at ``values``, from
    the gradient again at the site moved by :data:`_STEP` along u: (g − g')·u / step. A
    difference of first derivatives, which the check already trusts (a Hessian-vector
    product by autograd missed the second derivatives of ops that differentiate once, a
    custom op's or a ``.detach()`` inside a parameter, and so overstated the step). None
    where the gradient is zero, or the curvature is not a finite positive number."""
    norm = float(g.norm())
    if not norm > 0:
        return None
    u = g / norm
    moved = {**values, site: values[site] + _STEP * u}
    again, _ = _log_joint_gradients(model, args, kwargs, moved, {site: site}, {})
    kappa = float(((g - again[site]) * u).sum()) / _STEP
    return kappa if math.isfinite(kappa) and kappa > 0 else None


def _variance(q) -> torch.Tensor:
    """q's marginal variances, in the unit's value shape."""
    if isinstance(q, torch.distributions.Independent):
        q = q.base_dist
    if isinstance(q, torch.distributions.MultivariateNormal):
        return q.covariance_matrix.diagonal(dim1=-2, dim2=-1)
    return q.variance
