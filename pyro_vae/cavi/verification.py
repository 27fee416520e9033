"""Checking the probed factors where the fitted q lies, for ``AutoCAVI``.

The factors are solved at probe points (:mod:`pyro_vae.cavi.conjugate_forms`) and checked
at fresh ones drawn the same way: a Normal latent near N(0, 1), a Beta's on [0.05, 0.95].
A factor conjugate only in part of the space (``mu.clamp(max=3)``, a ``torch.where``) fits
there, and q can then settle beyond the kink, where the model's log-density is not the
solved form at all: a Normal likelihood clamped at 3 with data near 4 gave q(μ) = N(4.08,
0.14) and a bound 25.6 nats above the clamped model's log evidence, with no warning.

So after the sweeps each factor is checked again at a few points drawn where q puts its
mass: around q in its frame for the families that take one (x = m + L·v, the points a
re-probe would draw), from q itself for Beta, Dirichlet and the discrete latents. At each
point the solved form gives log f as C contracted with that point's statistics (a point
mass's expectation), compared with the model's log-density there, per element, relative to
1 + its size. The comparison is made in the coordinates the factors were solved in (q's
local ones after a re-probe), so float64 rounding far from zero does not read as a misfit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from pyro_vae.cavi.conjugate_forms import _dist_name, _sum_to
from pyro_vae.cavi.expectations import contract
from pyro_vae.cavi.exponential_families import (
    BernoulliFamily,
    BetaFamily,
    CategoricalFamily,
    DirichletFamily,
)
from pyro_vae.cavi.probe_frames import frame_of, from_local, has_frames, to_local
from pyro_vae.cavi.seeding import cpu_rng

_F64 = torch.float64
#: Points drawn from q at which every factor is checked after the sweeps.
POINTS = 4
#: Misfit allowed there, relative to 1 + the factor's |log f| per element: looser than the
#: probe check's 1e-7 (the points may lie some way from the probe points, and the solved
#: coefficients are then extrapolated); a kink's misfit is of order one.
RTOL = 1e-6
#: Beta and Dirichlet draws are kept this far inside (0, 1): a concentration of 10⁻⁸ draws
#: zeros, whose log is −inf (any point of the support checks the form equally).
_TINY = 1e-12


@dataclass
class Misfit:
    """A factor whose log-density at points drawn from q differs from its solved form."""

    factor: str
    distribution: str
    latents: tuple[str, ...]
    misfit: float  # the largest |predicted − log f| / (1 + |log f|) over elements and points

    def message(self) -> str:
        return (
            f"factor {self.factor!r} ({self.distribution}): at points drawn from the fitted q "
            f"of {list(self.latents)} its log-density differs from the conjugate form solved "
            f"at the probe points by {self.misfit:.3g} of its size: it is conjugate only in "
            "part of the latents' space (a clamp, a torch.where, a piecewise parameter), and "
            "q lies where the form does not hold; AutoCAVI updates only models with one "
            "conjugate form everywhere (fit this one by SVI)"
        )


def points_at_q(latents: dict, q: dict, count: int, generator) -> dict[str, torch.Tensor]:
    """``count`` points {site: [count, *batch, *event]} where q puts its mass: around q in
    its frame (:func:`~pyro_vae.cavi.probe_frames.frame_of`), or drawn from q (Beta,
    Dirichlet, Bernoulli, Categorical). A unit without a q (none here after a sweep) is
    drawn at its family's fixed probe place."""
    values = {}
    shape = torch.Size([count])
    for name, latent in latents.items():
        family, q_unit = latent.family, q.get(name)
        if q_unit is None:
            value = family.probe(shape + latent.batch_shape, generator)
        elif has_frames(family):
            standard = family.probe(shape + latent.batch_shape, generator)
            value = from_local(family, frame_of(family, q_unit), standard)
        else:
            value = _draw(family, q_unit, shape, generator)
        values.update(zip(latent.sites, value if len(latent.sites) > 1 else (value,), strict=True))
    return values


def _draw(family, q, shape: torch.Size, generator) -> torch.Tensor:
    """``shape`` draws from a Beta, Dirichlet, Bernoulli or Categorical q, seeded by
    ``generator`` (torch's Beta and Dirichlet samplers take no generator: they run under a
    seed drawn from it, the global RNG restored after)."""
    if isinstance(family, CategoricalFamily):
        probs = q.probs.to(_F64)
        flat = probs.reshape(-1, probs.shape[-1])
        drawn = torch.multinomial(flat, shape.numel(), replacement=True, generator=generator)
        return drawn.T.reshape(shape + probs.shape[:-1])
    if isinstance(family, BernoulliFamily):
        probs = q.probs.to(_F64).expand(shape + q.probs.shape)
        return torch.bernoulli(probs, generator=generator)
    with cpu_rng(int(torch.randint(0, 2**62, (), generator=generator))):
        drawn = q.sample(shape).to(_F64)
    if isinstance(family, BetaFamily):
        return drawn.clamp(_TINY, 1 - _TINY)
    assert isinstance(family, DirichletFamily)
    drawn = drawn.clamp_min(_TINY)
    return drawn / drawn.sum(-1, keepdim=True)


def worst_misfit(factors, latents: dict, frames: dict, values: dict, log_probs: dict,
                 trace) -> Misfit | None:  # fmt: skip
    """The factor whose solved form misses the model's log-density the most at the points
    ``values`` (with the model's ``log_probs`` there, {site: [S, *shape]}), if by more than
    :data:`RTOL`; else None. ``frames``: those the factors were solved in (their local
    coefficients are used, with the points' statistics in those coordinates)."""
    count = next(iter(values.values())).shape[0]
    statistics = {}
    for name, latent in latents.items():
        point = tuple(values[s] for s in latent.sites)
        if name in frames:
            point = to_local(latent.family, frames[name], point)
        statistics[name] = latent.family.statistics(*point)  # [S, *batch, B]
    worst = None
    for factor in factors:
        solved = factor if factor.local is None else replace(factor, coefficients=factor.local)
        predicted = torch.stack(  # [S, *batch] (a mixture's K-axis summed)
            [
                contract(solved, {n: stats[p] for n, stats in statistics.items()})
                for p in range(count)
            ]
        )
        actual = log_probs[factor.name].to(_F64)
        size = _sum_to(actual.abs(), predicted.shape)
        error = (predicted - _sum_to(actual, predicted.shape)).abs() / (1 + size)
        if not bool(error.isfinite().all()):  # log f is ±inf or NaN where q lies
            misfit = float("inf")
        else:
            misfit = float(error.max()) if error.numel() else 0.0
        if misfit > RTOL and (worst is None or misfit > worst.misfit):
            members = ((factor.selector,) if factor.selector else ()) + factor.latents
            distribution = _dist_name(trace.nodes[factor.name])
            worst = Misfit(factor.name, distribution, members, misfit)
    return worst
