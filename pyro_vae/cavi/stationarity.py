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
and how many standard errors of the draws' average ḡ_i is from zero.

Only for Normal units of one site; a fit with none, or a model autograd cannot run through
(a ``.item()``, a NumPy step), is not checked (None).
"""

from __future__ import annotations

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
) -> dict[str, tuple[float, float]] | None:
    """{unit: (step, z)} for each single-site Normal unit, at its coordinate with the
    largest step: ``step`` = |ḡ_i|·sd_i, the step along E_q[∇ log p(x, z)] in q's sds, and
    ``z`` = |ḡ_i| / se_i (inf where the draws agree exactly), ḡ_i averaged over ``draws``
    seeded draws of ``guide`` (q as a Pyro guide). ``blankets``: {unit: the factor sites
    whose log-density mentions it} (the fit's ``markov_blankets_``); each must carry
    autograd's graph. None where no unit is a single-site Normal or autograd cannot run
    the model (a factor of the blanket without a graph: a NumPy step, ``.item()``; the
    gradient would be its other factors' alone). The global random state is left as it
    was."""
    normal = {
        name: latent.sites[0]
        for name, latent in latents.items()
        if latent.family.name == "Normal" and len(latent.sites) == 1 and name in q
    }
    if not normal:
        return None
    grads = {name: [] for name in normal}
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(seed)  # torch alone: Python's and NumPy's streams are left alone
        for _ in range(draws):
            drawn = _gradients(model, args, kwargs, guide, normal, blankets)
            if drawn is None:
                return None
            for name, g in drawn.items():
                grads[name].append(g)
    out = {}
    for name, gs in grads.items():
        g = torch.stack(gs)
        mean, se = g.mean(0), (g.var(0) / draws).sqrt()
        step = (mean.abs() * _variance(q[name]).sqrt()).flatten()
        z = (mean.abs() / se).flatten()  # inf where se is 0 and the mean is not
        i = int(step.argmax())
        out[name] = (float(step[i]), float(z[i]))
    return out


def _gradients(model, args, kwargs, guide, normal: dict, blankets: dict) -> dict | None:
    """∇_z log p(x, z) at one draw of ``guide``, for the sites of ``normal`` {unit: site};
    None where a factor of some unit's blanket has no autograd graph."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    values = {
        name: site["value"].detach()
        for name, site in guide_trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"]
    }
    wanted = {name: values[site].clone().requires_grad_() for name, site in normal.items()}
    values.update({normal[name]: v for name, v in wanted.items()})
    try:
        trace = poutine.trace(poutine.condition(model, data=values)).get_trace(*args, **kwargs)
        score_factors(trace)
        graphless = [
            site
            for name in normal
            for site in blankets.get(name, ())
            if site in trace.nodes and not trace.nodes[site]["log_prob"].requires_grad
        ]
        if graphless:
            return None
        total = sum(site["log_prob"].sum() for site in trace.nodes.values() if is_factor(site))
        found = torch.autograd.grad(total, list(wanted.values()), allow_unused=True)
    except (RuntimeError, ValueError):  # the model leaves autograd (.item(), NumPy), or
        return None  # raises at a draw of q (a check's, not the fit's): not checked
    return {
        name: torch.zeros_like(v) if g is None else g.detach()
        for (name, v), g in zip(wanted.items(), found, strict=True)
    }


def _variance(q) -> torch.Tensor:
    """q's marginal variances, in the unit's value shape."""
    if isinstance(q, torch.distributions.Independent):
        q = q.base_dist
    if isinstance(q, torch.distributions.MultivariateNormal):
        return q.covariance_matrix.diagonal(dim1=-2, dim2=-1)
    return q.variance
