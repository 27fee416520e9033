"""Checking the probed factors where the fitted q lies, for ``AutoCAVI``.

The factors are solved at probe points (:mod:`pyro_vae.cavi.conjugate_forms`) and checked
at fresh ones drawn the same way: a Normal latent near N(0, 1), a Beta's on [0.05, 0.95].
A factor conjugate only in part of the space (``mu.clamp(max=3)``, a ``torch.where``) fits
there, and q can then settle beyond the kink, where the model's log-density is not the
solved form at all: a Normal likelihood clamped at 3 with data near 4 gave q(μ) = N(4.08,
0.14) and a bound 25.6 nats above the clamped model's log evidence, with no warning.

So after the sweeps each factor is checked again at :data:`POINTS` points, half drawn
from q itself (a block's precision and then its mean given it) and half from q widened
:data:`WIDEN` times about its mean, to reach its tails. Each half is a Latin hypercube
sample (McKay, Beckman & Conover 1979) where q has a quantile function (a Normal's, in the
coordinates of its Cholesky factor; a Gamma's, a Beta's, through scipy.special; a
Wishart's Bartlett variates; a Normal-Gamma or Normal-Wishart block's precision, then its
mean given it): every coordinate visits each of the half's 8 equal-probability strata
once, so each point is still a draw from q (or the widened q), but the 8 no longer all
miss a tail by chance (tester 29's F2: a rate ×1.5 beyond 1.5 sds right of a Gamma q of
shape 8.5, past which the widened q has 22% of its mass, went unseen at 1 seed of 8, the
bound 0.077 nats above the log evidence). A Normal-Wishart block's points were i.i.d.
draws from q, never widened: a jump in its mean 2 sds past q's went through at 14 seeds
of 20. Where a latent is a Wishart or Normal-Wishart unit, the check draws half as many
points again (:func:`point_count`): such a unit takes a third from q and two thirds
widened two ways (:func:`_widened_precision_points`), the other latents half and half.
Each scalar Normal, Gamma and Beta latent then takes two tail points of its own, at the
widened q's 1/64 and 63/64 quantiles, the others at their first point
(:func:`with_tail_points`): a kink 3.95 sds out, beyond the hypercube's reach at 2 seeds
of 3, had put a bound 8.9e-4 nats above the log evidence (tester AM's F1).

At each point the solved form gives log f as C contracted with that point's statistics (a
point mass's expectation), compared with the model's log-density there, in the coordinates
the factors were solved in (q's local ones after a re-probe). A factor misses when the
difference, summed over its elements, exceeds both 1e-9 of the part of its log-density
that moves between the points (a latent-free part, a constant in a ``pyro.factor`` or an
event's far coordinates, hid non-conjugacy behind 1e-9 of its size: tester DL) and 100 times the
estimated float64 rounding of the bound (:func:`~pyro_vae.cavi.probe_frames.numerical_error`)
or of the factor at that point (:func:`_point_rounding`, the larger): a kink's misfit is
structural (200 nats on a likelihood of 10⁹, 2e-7 of it, which a tolerance relative to
its size alone let through), while conjugate factors of huge counts (a Beta-Binomial with
n = 10¹¹), and factors read far into q's tails on data far from zero, miss by their
rounding only. Points that missed are kept
as witnesses and checked again after every later round (``AutoCAVI._verify``): a re-probe
draws fresh points, and one lucky round must not accept a kink an earlier round found.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pyro.distributions as dist
import torch
from scipy import special

from pyro_vae.cavi.data_indexing import sum_by_rows
from pyro_vae.cavi.expectations import product_sum, read_statistics
from pyro_vae.cavi.exponential_families import (
    TIGHT_LINK_ADVICE,
    BernoulliFamily,
    BetaFamily,
    CategoricalFamily,
    DirichletFamily,
    GammaFamily,
    GammaVectorFamily,
    NormalFamily,
    NormalGamma,
    NormalWishart,
    NormalWishartFamily,
    WishartFamily,
    _normal_root,
    _wishart_expected_logdet,
    gamma_shape_rate,
    unwrapped,
)
from pyro_vae.cavi.factor_form import batch_view
from pyro_vae.cavi.least_squares import CONSTANT_RTOL, summed_to
from pyro_vae.cavi.probe_frames import _EPS, _KAPPA, to_local
from pyro_vae.cavi.refusals import SVI_ADVICE, distribution_name, hidden_dependence
from pyro_vae.cavi.seeding import cpu_rng

_F64 = torch.float64
#: Points at which every factor is checked after the sweeps, half from q and half from q
#: widened, each half a Latin hypercube sample of 8 equal strata. Every coordinate then has
#: a point in the widened q's top eighth, past 3 · 1.15 sds of a Normal q's mean: a kink
#: within 3.45 sds of it is always reached, one 4 sds past (9.1% of the widened q's mass)
#: missed with probability 27% (i.i.d. draws: 47%, and 16% even at 2.5 sds, 0.994^8 ·
#: 0.80^8). Strata of 2% at the widened q's ends, tried, reach 6 sds, but refused a valid
#: factor of six latents at 4 seeds of 8: a point with several of them that far out
#: multiplies the solve's rounding (2.5e-7 of the factor there) past the check's tolerance.
POINTS = 16
#: Misfit allowed, relative to 1 + the part of the factor's summed log f that moves between
#: the points (:func:`_misfit_at`) ...
RTOL = 1e-9
#: ... and in units of the estimated float64 rounding of the bound (nats), ...
ROUNDING_MARGIN = 100.0
#: ... but never more than this of 1 + its size: rounding in a model's own log-density
#: reaches 4e-6 of it (a Binomial of 10¹¹ trials, lgamma terms of 10¹² cancelling to 14
#: nats), but a misfit of more is no rounding, whatever the estimate (a clamp whose flat side
#: left μ out of the factor sent q between 0 and 5,000 each round, and a rounding estimate
#: of 4e13 nats, q far from every point, excused a misfit a quarter of the factor's size)
ROUNDING_CAP = 1e-3
#: Half the points come from q widened this many times about its mean, to reach its tails.
WIDEN = 3.0
#: Gamma draws are kept this far inside their support (see _draw).
_TINY = 1e-300
#: Gamma draws are also kept at or above this fraction of their q's mean. A widened Gamma of
#: shape 1.5 / WIDEN² piles its mass up at 0: ARD's q(α) drew α of 10⁻¹⁴, where a model's
#: MultivariateNormal(precision_matrix=Mᵀ diag(α) M) is singular to float64 (its
#: log-density 0.02 nats off, or its Cholesky failing), and a conjugate model was refused as
#: a kink (tester 28's F2). Above the floor the widened draws still reach a kink a few
#: percent of the mean into the left tail (tester 29's F1: keeping the shape at 1 instead
#: let a clamp at 3% of the mean through at 9 seeds of 10).
_GAMMA_FLOOR = 1e-6
#: Beta and Dirichlet draws (probabilities) are kept this far inside theirs: torch's
#: Categorical, Bernoulli and Binomial clamp a probability to float64's eps (2.2e-16)
#: before its log (``probs_to_logits``), so below it the model scores log eps, not log p.
_PROBABILITY_FLOOR = 1e-12


@dataclass
class Misfit:
    """A factor whose log-density at points drawn from q differs from its solved form."""

    factor: str
    distribution: str
    latents: tuple[str, ...]
    misfit: float  # Σ_elements |predicted − log f| at its worst point (nats)
    relative: float  # that, over 1 + Σ_elements |log f| there
    precision: bool = False  # whether the factor reads a Wishart or Normal-Wishart unit

    def message(self) -> str:
        if not self.latents:
            return hidden_dependence(self.factor, self.distribution, self.misfit, "q")
        head = (
            f"factor {self.factor!r} ({self.distribution}): at points drawn from the fitted q "
            f"of {list(self.latents)} its log-density differs from the conjugate form solved "
            f"at the probe points by {self.misfit:.3g} nats ({self.relative:.3g} of its "
            "size), beyond float64 rounding"
        )
        kink = (
            "it is conjugate only in part of the latents' space (a clamp, a torch.where, a "
            "piecewise parameter), and q lies where the form does not hold; AutoCAVI updates "
            f"only models with one conjugate form everywhere ({SVI_ADVICE}). Where no such op "
            "is there, latents linked far more tightly than their other scales (a child's sd "
            f"10⁻³ of its parent's) do this too, {TIGHT_LINK_ADVICE}"
        )
        small = SMALL_MISFIT if not self.precision else PRECISION_ROUNDING
        if self.relative >= small:
            return f"{head}: {kink}"
        inverse = (
            " A factor that reads a Wishart precision Λ through its inverse "
            "(MultivariateNormal(covariance_matrix=torch.linalg.inv(Λ))) rounds by up to "
            "ε·cond(Λ)², beyond what the check allows at q's widened points (ε·cond(Λ)): "
            "pass the precision itself (precision_matrix=Λ)."
            if self.precision
            else ""
        )
        return (
            f"{head}. A misfit this small is more often rounding in the solve of a factor of "
            "several latents on data far from zero (crossed intercepts and slopes at 10⁴) "
            f"than a kink: centre the data and the priors' locations (y − ȳ) and fit again."
            f"{inverse} If it persists, {kink}"
        )


#: a misfit below this fraction of the factor's size is reported as likely rounding
#: (tester 12: crossed intercept-and-slope pairs on data at 10⁴ missed by 1e-7 to 6e-6)
SMALL_MISFIT = 1e-5
#: likewise for a factor that reads a Wishart precision, whose model may invert it (tester
#: 35's F2: covariance_matrix=inv(Λ) at D = 8 missed by 2.2e-5 of its size; a kink that
#: scales Λ by 3 or 1/2 misses by a large part of it)
PRECISION_ROUNDING = 1e-4


def points_at_q(latents: dict, q: dict, count: int, generator) -> dict[str, torch.Tensor]:
    """``count`` points {site: [count, *batch, *event]}, the first half drawn from q (a
    block's precision, then its mean given that draw), the second from q widened
    (:func:`_widened`), or, for a discrete q, through every state it gives mass
    (:func:`_covering_draw`; K points for K states, up to three quarters of them, a
    quarter always from q), seeded by ``generator``. A unit without a q (none here after
    a sweep) is drawn at its family's fixed probe place."""
    values = {}
    near, wide = torch.Size([count - count // 2]), torch.Size([count // 2])
    for name, latent in latents.items():
        family, q_unit = latent.family, q.get(name)
        widened_q = None if q_unit is None else _widened(family, q_unit)
        if q_unit is None:
            value = family.probe(torch.Size([count]) + latent.batch_shape, generator)
        elif widened_q is q_unit:  # a discrete q: from it, and through its states
            states = family.k if isinstance(family, CategoricalFamily) else 2
            covering = min(max(count // 2, states), count - count // 4)
            drawn = _draw(family, q_unit, torch.Size([count - covering]), generator)
            covered = _covering_draw(family, q_unit, torch.Size([covering]), generator)
            value = torch.cat([drawn, covered])
        else:
            near_here, wide_here = near, wide
            if _is_precision(family):  # a third from q, two widened ways (see below)
                near_here = torch.Size([count // 3])
                wide_here = torch.Size([count - count // 3])
            drawn = _stratified_draw(family, q_unit, near_here, generator)
            widened = _widened_precision_points(family, q_unit, wide_here, generator)
            if widened is None:
                widened = _stratified_draw(family, widened_q, wide_here, generator)
            if isinstance(drawn, tuple):
                value = tuple(torch.cat(pair) for pair in zip(drawn, widened, strict=True))
            else:
                value = torch.cat([drawn, widened])
        values.update(zip(latent.sites, value if len(latent.sites) > 1 else (value,), strict=True))
    return with_tail_points(latents, q, values)


#: Each scalar Normal, Gamma and Beta latent also takes two points of its own, at the
#: widened q's quantiles TAIL_LEVEL and 1 − TAIL_LEVEL (6.5 of q's sds for a Normal; 7.8
#: right of a Gamma q of shape 10), the other latents at their first point (a draw from
#: q), :func:`with_tail_points`.
TAIL_LEVEL = 1 / 64


def with_tail_points(latents: dict, q: dict, values: dict) -> dict[str, torch.Tensor]:
    """``values`` ({site: [S, *batch, *event]}) and, after them, two tail points per scalar
    Normal, Gamma or Beta latent with a q: that latent at its widened q's quantiles
    :data:`TAIL_LEVEL` and 1 − TAIL_LEVEL (elementwise over its plates), every other site
    at its first point. The Latin hypercube reaches a widened q's top eighth once per
    latent, so a kink just beyond it went unseen: ``Poisson(torch.where(λ > 4.5,
    4.5 (λ/4.5)⁶, λ))`` under q(λ) = Gamma(10, 5) (its kink 3.95 sds out, 0.11% of q's
    mass) gave a bound 8.9e-4 nats above the log evidence at 2 seeds of 3 (tester AM's F1).
    One latent far out at a time: points with several latents of one factor that far out
    multiply its solve's rounding past the check's tolerance (see :data:`POINTS`)."""
    tails = {}
    for name, latent in latents.items():
        if name in q and len(latent.sites) == 1:
            tail = _tail_values(latent.family, _widened(latent.family, q[name]))
            if tail is not None:
                tails[latent.sites[0]] = tail
    if not tails:
        return values
    out = {}
    for site, value in values.items():
        first = value[:1].expand((2,) + value.shape[1:])
        parts = [value] + [
            tail.expand(first.shape) if site == far else first for far, tail in tails.items()
        ]
        out[site] = torch.cat(parts)
    return out


def _tail_values(family, widened) -> torch.Tensor | None:
    """The widened q's quantiles TAIL_LEVEL and 1 − TAIL_LEVEL, [2, *batch], for a scalar
    Normal, Gamma or Beta latent, kept inside the support as :func:`_draw` keeps its
    draws; None for any other (or where its parameters are too many distinct sets)."""
    levels = np.array([TAIL_LEVEL, 1 - TAIL_LEVEL])
    if isinstance(family, NormalFamily) and not family.event_dim:
        z = torch.as_tensor(special.ndtri(levels), dtype=_F64)
        loc, scale = widened.loc.to(_F64), widened.scale.to(_F64)
        return loc + z.reshape((2,) + (1,) * loc.dim()) * scale
    if isinstance(family, GammaFamily):
        a, b = torch.broadcast_tensors(*gamma_shape_rate(widened))
        table = _levels_table(special.gammaincinv, a.unsqueeze(-1), levels)
        return None if table is None else _floored_gamma(table, a, b)
    if isinstance(family, BetaFamily):
        a, b = torch.broadcast_tensors(widened.concentration1.to(_F64),
                                       widened.concentration0.to(_F64))  # fmt: skip
        table = _levels_table(special.betaincinv, torch.stack([a, b], -1), levels)
        if table is None:
            return None
        return table.clamp(_PROBABILITY_FLOOR, 1 - _PROBABILITY_FLOOR)
    return None


def _levels_table(quantile, parameters: torch.Tensor, levels: np.ndarray):
    """``quantile(*parameters, level)`` [len(levels), *batch] for parameters [*batch, m],
    evaluated once per distinct parameter set rounded to 24 significant bits (as
    :func:`_quantile_table` does: q's solved parameters carry float64 noise), or None
    beyond :data:`_QUANTILE_BUDGET` evaluations."""
    flat = _rounded(parameters.reshape(-1, parameters.shape[-1]).numpy())
    distinct, inverse = np.unique(flat, axis=0, return_inverse=True)
    if len(distinct) * len(levels) > _QUANTILE_BUDGET:
        return None
    table = quantile(*[distinct[:, j : j + 1] for j in range(flat.shape[1])], levels[None, :])
    picked = torch.from_numpy(np.ascontiguousarray(table[inverse.reshape(-1)].T))
    return picked.reshape((len(levels),) + parameters.shape[:-1])


def point_count(latents: dict) -> int:
    """How many points the check draws: :data:`POINTS`, or half as many again where some
    latent is a Wishart or Normal-Wishart unit, whose widened points are of two kinds
    (:func:`_widened_precision_points`)."""
    precise = any(_is_precision(latent.family) for latent in latents.values())
    return POINTS + POINTS // 2 if precise else POINTS


def _is_precision(family) -> bool:
    return isinstance(family, (WishartFamily, NormalWishartFamily))


def _widened(family, q):
    """q with its spread :data:`WIDEN` times larger about (nearly) the same mean, of the same
    family: a Normal's scale times WIDEN; a Gamma's, Beta's or Dirichlet's concentrations,
    and a Normal-Gamma block's shape, rate and relative precision, over WIDEN² (a Gamma's
    draws floored, see :func:`_draw`); a Wishart's degrees of freedom above D + 1 over
    WIDEN² (:func:`_widened_wishart`), and a Normal-Wishart block's too, with its relative
    precision β over WIDEN². A discrete q is left as it is."""
    shrink = WIDEN**-2
    if isinstance(q, NormalGamma):
        a, b = q.concentration * shrink, q.rate * shrink
        return NormalGamma(q.loc, q.precision * shrink, a, b, q.scalar, q.precision_event)
    if isinstance(q, NormalWishart):  # q(Λ) widened as a Wishart's, β over WIDEN²
        df, scale = _widened_wishart(q.df, q.scale)
        return NormalWishart(q.loc, q.beta * shrink, scale, df)
    if isinstance(family, GammaFamily):
        return dist.Gamma(q.concentration * shrink, q.rate * shrink)
    if isinstance(family, GammaVectorFamily):
        a, b = gamma_shape_rate(unwrapped(q))
        return dist.Gamma(a * shrink, b * shrink).to_event(1)
    if isinstance(family, BetaFamily):
        return dist.Beta(q.concentration1 * shrink, q.concentration0 * shrink)
    if isinstance(family, DirichletFamily):
        return dist.Dirichlet(q.concentration * shrink)
    if isinstance(family, WishartFamily):
        return dist.Wishart(*_widened_wishart(q.df, q.covariance_matrix))
    if isinstance(family, NormalFamily):
        mean, root = _normal_root(q, family.event_dim)
        if not family.event_dim:  # a scalar site: root is its sd, [*batch, 1, 1]
            return dist.Normal(mean[..., 0], WIDEN * root[..., 0, 0])
        return dist.MultivariateNormal(mean, scale_tril=WIDEN * root)
    return q


#: A widened Wishart point's log-eigenvalues about q's centre are kept within this of it
#: (a factor of REACH either way): further out, a nearly singular precision makes a model's
#: Cholesky fail, or its rounding read as a kink (tester 33's F1).
_LOG_EIGEN_REACH = math.log(1e3)


def _widened_precision_points(family, q, shape: torch.Size, generator):
    """The widened points of a Wishart q, or of a Normal-Wishart block's (Λ, then μ given it
    with β over WIDEN², as :func:`_block_points` places them), of two kinds, each from q's
    own stratified Bartlett points: the first half amplified WIDEN times about q's centre
    in the log-Euclidean sense, log|Λ| stratified (:func:`_widened_precisions`), which
    spreads Λ's shape (each entry, off-diagonal ones too) and log|Λ| WIDEN times further;
    the second half scaled wholly into one tail or the other in the Loewner order
    (:func:`_loewner_extremes`), which puts points past both tails of every diagonal entry,
    the trace and log|Λ| (the first kind's convexity leaves the left tails of the entries
    and the trace to q's own points: tester 34's F1). Widening q's family instead (ν − D −
    1 over WIDEN², the mean kept) spread Λ 2.1 times, not 3, and shifted log|Λ| left by 1.3
    sds of q's: kinks 1.5 to 2 sds right of q's mean in Λ₁₁, the trace or log|Λ| went
    through at 1 to 6 seeds of 10, bounds up to 0.17 nats above the kinked model's log
    evidence (tester 32's F1). None for any other q.
    """
    if isinstance(q, NormalWishart):
        df, scale = q.df.to(_F64), q.scale.to(_F64)
    elif isinstance(family, WishartFamily):
        base = unwrapped(q)
        df, scale = base.df.to(_F64), base.covariance_matrix.to(_F64)
    else:
        return None
    lower = torch.linalg.cholesky(scale)
    amplified = shape[0] // 2
    kinds = [(_widened_precisions, torch.Size([amplified]) + shape[1:]),
             (_loewner_extremes, torch.Size([shape[0] - amplified]) + shape[1:])]  # fmt: skip
    precision = torch.cat([kind(_q_points(df, lower, size, generator), df, scale, generator)
                           for kind, size in kinds if size[0]])  # fmt: skip
    if not isinstance(q, NormalWishart):
        return precision
    beta = q.beta.to(_F64) * WIDEN**-2
    return _means_given(q.loc.to(_F64), beta, precision, generator), precision


def _q_points(df, lower, shape: torch.Size, generator) -> torch.Tensor:
    """``shape`` stratified points of Wishart(ν, L Lᵀ) (:func:`_wishart_points`), or
    i.i.d. draws where the quantile table is declined."""
    points = _wishart_points(df, lower, shape, generator)
    if points is None:
        with cpu_rng(int(torch.randint(0, 2**62, (), generator=generator))):
            points = wishart_draw(dist.Wishart(df, scale_tril=lower), shape).to(_F64)
    return points


def _loewner_extremes(points: torch.Tensor, df, scale, generator) -> torch.Tensor:
    """Points [n, *batch, D, D] of Wishart(ν, W) each scaled (its eigenvalues alike) to lie
    wholly in one tail in the Loewner order: under the Wishart every quadratic form vᵀΛv
    is vᵀWv times a χ²(ν) (Muirhead 1982, 3.2.8), and a point of rank r by log|Λ| is
    scaled so that, at the level u_r = (r + ½)/n, all its quadratic forms lie below (u_r <
    ½) or above (u_r > ½) the quantile of that χ² widened WIDEN times in the log (log χ² ~
    E + WIDEN·z_r·sd, ψ and ψ′ of ν/2, z_r = Φ⁻¹(u_r)): its largest, or smallest,
    eigenvalue relative to W is set there (a stratum's middle, not a random place in it:
    the end strata's places reach far past 3 sds, and there a valid block on data 10⁵
    from its mean's prior missed by its rounding, 3e-5 of its size, and was refused as a
    kink). So every quantity of Λ monotone in the Loewner order (each diagonal entry, the
    trace, log|Λ|, each eigenvalue) has points past both of its tails:
    the log-Euclidean points (:func:`_widened_precisions`) triple the spread of Λ's shape,
    which by convexity moves its entries and trace right, and kinks 1 to 1.5 sds left of
    q's trace or Λ₀₀ were accepted, 0.01 to 0.16 nats above the kinked model's log
    evidence (tester 34's F1). Before it is scaled, the shape of each point of odd rank is
    drawn WIDEN times nearer isotropy (its own log-eigenvalues' spread about their mean
    over WIDEN, Λ^⅓ up to scale; the guarantee above holds for any shape), the others
    keep q's: those points cover the other side of Λ's shape, a Λ more isotropic than
    q's draws (smaller log(λ_max/λ_min), off-diagonals and correlations nearer 0), which
    the log-Euclidean points only move away from; a kink where log(λ_max/λ_min) fell 1.5
    sds below its posterior mean was accepted at 5 seeds of 8, 0.048 nats above the
    kinked model's log evidence (tester 35's F1). All shrunk, a kink in a correlation 2
    sds right of its mean went through at 1 seed of 2 (0.024 nats). Each log-eigenvalue
    about C is kept within :data:`_LOG_EIGEN_REACH`."""
    n = points.shape[0]
    values, vectors = torch.linalg.eigh(points)  # Λ's own shape, odd ranks nearer isotropy
    logs = values.clamp_min(_TINY).log()
    odd = (logs.sum(-1).argsort(0).argsort(0) % 2 == 1).unsqueeze(-1)
    mean = logs.mean(-1, keepdim=True)
    logs = torch.where(odd, mean + (logs - mean) / WIDEN, logs)
    points = (vectors * logs.exp().unsqueeze(-2)) @ vectors.mT
    centre = _log_centre(df, scale)
    lower, logs, vectors = _whitened_eigen(points, centre)  # logs ascending, about C = c·W
    ranks = logs.sum(-1).argsort(0).argsort(0).to(_F64)
    level = (ranks + 0.5) / n  # each stratum's middle
    half = df / 2
    log_c = (centre[..., 0, 0] / scale[..., 0, 0]).log()  # C = c·W: χ²'s scale about C
    target = (math.log(2) + torch.digamma(half) - log_c
              + WIDEN * torch.polygamma(1, half).sqrt() * torch.special.ndtri(level))  # fmt: skip
    extreme = torch.where(level < 0.5, logs[..., -1], logs[..., 0])
    logs = (logs + (target - extreme).unsqueeze(-1)).clamp(-_LOG_EIGEN_REACH, _LOG_EIGEN_REACH)
    return _unwhitened(lower, logs, vectors)


def _log_centre(df: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A centre of Wishart(ν, W) for :func:`_widened_precisions`: its mean νW scaled so that its
    log-determinant is E log|Λ| (below log|νW|, Jensen's), so that log|Λ| is widened
    about its own mean."""
    d = scale.shape[-1]
    mean = df[..., None, None] * scale
    gap = _wishart_expected_logdet(df, scale) - torch.linalg.slogdet(mean)[1]
    return mean * (gap / d).exp()[..., None, None]


def _widened_precisions(points: torch.Tensor, df, scale, generator) -> torch.Tensor:
    """Points [n, *batch, D, D] of Wishart(ν, W) moved WIDEN times as far from its centre C
    (:func:`_log_centre`) in the log-Euclidean sense (Arsigny, Fillard, Pennec & Ayache
    2007): C^½ exp(f · log(C^-½ P C^-½)) C^½, C's Cholesky factor for C^½; then each
    scaled (its log-eigenvalues shifted alike) so that their log-determinants take, in
    their own rank order, one place in each of the n equal strata of N(E log|Λ|,
    (WIDEN · sd log|Λ|)²), the moments of log|Λ| under the Wishart (Σ ψ and Σ ψ′ of
    (ν + 1 − i)/2; Iman & Conover 1982, as :func:`_normal_points`): log|Λ| is the sum of
    D Bartlett variates' logs, which their strata leave unstratified (a kink 2 sds right
    of q's log|Λ| went through at 2 seeds of 10, 0.018 nats above the kinked model's log
    evidence). Each log-eigenvalue about C is kept within :data:`_LOG_EIGEN_REACH`."""
    n, d = points.shape[0], points.shape[-1]
    lower, logs, vectors = _whitened_eigen(points, _log_centre(df, scale))
    logs = WIDEN * logs  # [n, *batch, D], about C
    half = (df.unsqueeze(-1) + 1 - torch.arange(1, d + 1, dtype=_F64)) / 2
    sd = torch.polygamma(1, half).sum(-1).sqrt()
    centre_logdet = 2 * lower.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    ranks = logs.sum(-1).argsort(0).argsort(0).to(_F64)
    place = torch.rand(ranks.shape, generator=generator, dtype=_F64)
    level = ((ranks + place) / n).clamp(_U_EDGE, 1 - _U_EDGE)
    target = _wishart_expected_logdet(df, scale) + WIDEN * sd * torch.special.ndtri(level)
    logs = logs + ((target - centre_logdet - logs.sum(-1)) / d).unsqueeze(-1)
    return _unwhitened(lower, logs.clamp(-_LOG_EIGEN_REACH, _LOG_EIGEN_REACH), vectors)


def _whitened_eigen(points: torch.Tensor, centre: torch.Tensor):
    """(L, log-eigenvalues [n, *batch, D] ascending, eigenvectors) of the SPD ``points``
    whitened by ``centre`` = L Lᵀ (its Cholesky factor): L⁻¹ P L⁻ᵀ."""
    lower = torch.linalg.cholesky(centre)
    eye = torch.eye(lower.shape[-1], dtype=_F64).expand(lower.shape)
    inverse = torch.linalg.solve_triangular(lower, eye, upper=False)
    whitened = inverse @ points @ inverse.mT
    values, vectors = torch.linalg.eigh((whitened + whitened.mT) / 2)
    return lower, values.clamp_min(_TINY).log(), vectors


def _unwhitened(lower, logs, vectors) -> torch.Tensor:
    """The SPD points L V diag(exp logs) Vᵀ Lᵀ, symmetrized: :func:`_whitened_eigen`'s
    inverse."""
    moved = lower @ (vectors * logs.exp().unsqueeze(-2)) @ vectors.mT @ lower.mT
    return (moved + moved.mT) / 2


def _widened_wishart(df: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ν′, W′) of Wishart(ν, W) widened: ν − D − 1 over WIDEN², its mean νW kept. ν′ stays
    above D + 1, its draws well away from singular (fewer degrees of freedom would make a
    model's Cholesky fail)."""
    d = scale.shape[-1]
    widened = (d + 1) + (df - (d + 1)).clamp_min(0) * WIDEN**-2
    return widened, scale * (df / widened)[..., None, None]


def latin_uniforms(shape: torch.Size, generator) -> torch.Tensor:
    """Uniforms [n, *rest] on (0, 1), float64, a Latin hypercube sample along dim 0 (McKay,
    Beckman & Conover 1979): each coordinate takes each stratum [i/n, (i + 1)/n) exactly
    once, the strata in an independent random order per coordinate, at a uniform place in
    each; so every point is marginally Uniform(0, 1), and its coordinates independent. Kept
    2⁻⁵³ inside the ends (the quantile functions are infinite at them)."""
    n = shape[0]
    strata = stratum_orders(shape, generator)
    place = torch.rand(shape, generator=generator, dtype=_F64)
    return ((strata + place) / n).clamp(_U_EDGE, 1 - _U_EDGE)


def stratum_orders(shape: torch.Size, generator) -> torch.Tensor:
    """LongTensor [n, *rest]: for each of the ``rest`` elements an independent uniformly
    random order of the strata 0 … n − 1 along dim 0 (a Latin hypercube's; the argsort of
    uniforms, numpy's along a contiguous last dim: 4x torch's along dim 0)."""
    n = shape[0]
    order = torch.rand(shape[1:] + (n,), generator=generator, dtype=_F64).numpy()
    return torch.from_numpy(order.argsort(-1)).movedim(-1, 0)


_U_EDGE = 2.0**-53


def _stratified_draw(family, q, shape: torch.Size, generator):
    """``shape`` draws from ``q``, a Latin hypercube sample along dim 0 (:func:`latin_uniforms`)
    through q's quantile function where q has one: a Normal's (:func:`_normal_points`), a
    Gamma's and a Beta's (scipy.special's ``gammaincinv``, ``betaincinv``: torch has neither;
    :func:`_quantile_table`), a Wishart's Bartlett variates (:func:`_wishart_points`), a
    block's precision and then its mean given that (:func:`_block_points`); kept inside
    their supports as :func:`_draw` keeps its draws. Any other q (a Dirichlet, a discrete
    one), and one whose table :func:`_quantile_table` declines, is drawn i.i.d. by
    :func:`_draw`."""
    base = unwrapped(q)
    drawn = None
    if isinstance(q, (NormalGamma, NormalWishart)):
        drawn = _block_points(q, shape, generator)
    elif isinstance(family, NormalFamily):
        drawn = _normal_points(*_normal_root(q, family.event_dim), shape, generator)
        drawn = drawn if family.event_dim else drawn.squeeze(-1)
    elif isinstance(family, (GammaFamily, GammaVectorFamily)):
        drawn = _gamma_quantiles(*gamma_shape_rate(base), shape, generator)
    elif isinstance(family, WishartFamily):
        drawn = _wishart_points(base.df.to(_F64), base.scale_tril.to(_F64), shape, generator)
    elif isinstance(family, BetaFamily):
        a, b = torch.broadcast_tensors(base.concentration1.to(_F64), base.concentration0.to(_F64))
        pairs = torch.stack([a, b], -1)
        table = _quantile_table(special.betaincinv, special.betainc, pairs, shape + a.shape,
                                generator)  # fmt: skip
        if table is not None:
            drawn = table.clamp(_PROBABILITY_FLOOR, 1 - _PROBABILITY_FLOOR)
    return _draw(family, q, shape, generator) if drawn is None else drawn


def _block_points(q, shape: torch.Size, generator) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(μ, τ or Λ) [*shape, *batch, …] of a Normal-Gamma or Normal-Wishart block's q: the
    precision's stratified points (:func:`_gamma_quantiles`, :func:`_wishart_points`), then
    the mean's given each, N(m, (τP)⁻¹) or N(m, (βΛ)⁻¹), stratified by rank across the
    points (:func:`_normal_points`; the precision differs from point to point, so each
    point is a draw from q only nearly: its level's stratum depends a little on its
    precision through its rank). None where the precision's table is declined."""
    if isinstance(q, NormalGamma):
        precision = _gamma_quantiles(q.concentration, q.rate, shape, generator)
        if precision is None:
            return None
        if q.precision_event:  # as the precision site holds it, [*shape, *batch, 1]
            precision = precision.unsqueeze(-1)
        mean, root = _normal_root(q.mean_given(precision), 0 if q.scalar else 1)
    else:  # no torch distribution built: their argument checks were half this draw's time
        scale = q.scale.to(_F64)
        precision = _wishart_points(q.df.to(_F64), torch.linalg.cholesky(scale), shape,
                                    generator)  # fmt: skip
        if precision is None:
            return None
        return _means_given(q.loc.to(_F64), q.beta.to(_F64), precision, generator), precision
    drawn = _normal_points(mean, root, torch.Size(), generator)  # already led by the points
    return (drawn.squeeze(-1) if q.scalar else drawn), precision


def _means_given(loc, beta, precision, generator) -> torch.Tensor:
    """A Normal-Wishart block's means [n, *batch, D] given its precision points
    ``precision`` [n, *batch, D, D], from N(m, (βΛ)⁻¹) stratified by rank across the
    points (:func:`_normal_points`)."""
    # (βΛ)⁻¹ = R Rᵀ with R = chol(βΛ)⁻ᵀ
    lower = torch.linalg.cholesky(beta[..., None, None] * precision)
    eye = torch.eye(lower.shape[-1], dtype=_F64).expand(lower.shape)
    root = torch.linalg.solve_triangular(lower, eye, upper=False).mT
    return _normal_points(loc.expand(precision.shape[:-1]), root, torch.Size(), generator)


def _normal_points(mean, root, shape: torch.Size, generator) -> torch.Tensor:
    """[*shape, *batch, d] points of N(mean, L Lᵀ) (mean [*batch, d], L ``root``; with
    ``shape`` empty, ``batch`` led by the points, one mean and L each) whose every
    coordinate takes each of the n strata of its own marginal N(mean_i, Σ_ii) once: drawn
    as mean + L z, z a Latin hypercube sample, and each coordinate then put at a uniform
    place in the stratum of its rank among the n points (Iman & Conover 1982: the marginals
    stratified, the points' dependence kept in their ranks). Stratifying z alone stratified
    only the first coordinate of a correlated q (tester 30's F1: a jump 3 sds past the
    second of two coordinates at correlation −0.87 was accepted at 5 seeds of 40)."""
    z = torch.special.ndtri(latin_uniforms(shape + mean.shape, generator))
    drawn = mean + (root @ z.unsqueeze(-1)).squeeze(-1)
    if mean.shape[-1] == 1:
        return drawn
    ranks = drawn.argsort(0).argsort(0).to(_F64)
    place = torch.rand(drawn.shape, generator=generator, dtype=_F64)
    level = ((ranks + place) / drawn.shape[0]).clamp(_U_EDGE, 1 - _U_EDGE)
    return mean + root.pow(2).sum(-1).sqrt() * torch.special.ndtri(level)


def _wishart_points(df: torch.Tensor, scale_tril: torch.Tensor, shape: torch.Size, generator):
    """[*shape, *batch, D, D] points of Wishart(ν ``df``, W = L Lᵀ, L ``scale_tril``) by the
    Bartlett decomposition (as :func:`wishart_draw`), each of its variates a Latin
    hypercube sample along dim 0: the diagonal's √χ²(ν − i) at chi-square quantiles
    (:func:`_quantile_table`, χ²(k) = 2 Gamma(k/2)) and the N(0, 1) below it at normal
    ones; so Λ₀₀ = W₀₀ χ²(ν), monotone in its variate, visits each of its strata once.
    None where the table is declined."""
    d, batch = scale_tril.shape[-1], torch.broadcast_shapes(df.shape, scale_tril.shape[:-2])
    df = df.expand(batch).unsqueeze(-1) - torch.arange(d, dtype=_F64)
    halves = _quantile_table(special.gammaincinv, special.gammainc, (df / 2).unsqueeze(-1),
                             shape + df.shape, generator)  # fmt: skip
    if halves is None:
        return None
    a = torch.diag_embed((2 * halves).sqrt())
    rows, cols = torch.tril_indices(d, d, offset=-1)
    below = latin_uniforms(shape + batch + (len(rows),), generator)
    a[..., rows, cols] = torch.special.ndtri(below)
    root = scale_tril @ a
    return root @ root.mT


def _gamma_quantiles(shape_a, rate, shape: torch.Size, generator) -> torch.Tensor | None:
    """Gamma(a, b) quantiles at Latin hypercube levels [*shape, *batch] (see
    :func:`_quantile_table`), floored as :func:`_draw` floors its Gamma draws; None where
    the table is declined."""
    a, b = torch.broadcast_tensors(shape_a.to(_F64), rate.to(_F64))
    table = _quantile_table(special.gammaincinv, special.gammainc, a.unsqueeze(-1),
                            shape + a.shape, generator)  # fmt: skip
    return None if table is None else _floored_gamma(table, a, b)


def _floored_gamma(unit: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Gamma(a, b) values from unit-rate ones, floored as :func:`_draw` floors its draws."""
    return torch.maximum(unit / b, _GAMMA_FLOOR * a / b).clamp_min(_TINY)


def _rounded(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to 24 significant bits: q's solved parameters carry float64 noise
    (999.9999983 for 1,000), and a quantile per distinct parameter set is one per set."""
    mantissa, exponent = np.frexp(values)
    return np.ldexp(np.round(mantissa * 2.0**24) / 2.0**24, exponent)


#: Most scipy quantile evaluations a table may take (distinct parameter sets × levels):
#: 2¹⁶, about 40 ms of ``betaincinv``. Beyond it a latent is drawn i.i.d.
_QUANTILE_BUDGET = 2**16


def _quantile_table(quantile, cdf, parameters: torch.Tensor, shape: torch.Size, generator):
    """``quantile(*parameters, u)`` (a scipy.special inverse CDF of unit scale) for every
    element's parameters [*batch, m] at a Latin hypercube sample [n, *batch] along dim 0:
    each element takes each of n strata once, in its own random order, at a level in the
    stratum drawn once per stratum and shared by the elements; so each point is still
    marginally a draw at a uniform level. The function is evaluated once per distinct
    parameter set, rounded to 24 significant bits (q's solved parameters carry float64
    noise: 999.9999983 for 1,000), and level: a local latent's q shapes are a₀ + a count,
    few distinct (10⁵ Gamma elements: 0.07 s a half, torch's own sampler 0.1 s; evaluated
    per element, 0.4 s, and 2.2 s for 10⁵ Betas, tester 30's F2).

    None, for an i.i.d. draw instead, where that is more than :data:`_QUANTILE_BUDGET`
    evaluations, or where ``cdf`` (the forward function) does not take some quantile back
    to its level within 10⁻⁶ (an under- or overflow to the support's end aside):
    ``betaincinv(1000, 3e8, u)`` returns 1.5e-8, twice the mean, whatever u (tester 30's
    F4)."""
    n = shape[0]
    code, distinct, inverses = np.zeros(parameters.shape[:-1].numel(), dtype=np.int64), [], []
    # the distinct parameter sets, one code each (numpy's unique: 20x torch's here)
    for column in parameters.unbind(-1):
        values, inverse = np.unique(_rounded(column.reshape(-1).numpy()), return_inverse=True)
        code = code * len(values) + inverse
        distinct, inverses = [*distinct, values], [*inverses, inverse]
    _, first, element = np.unique(code, return_index=True, return_inverse=True)
    if len(first) * n > _QUANTILE_BUDGET:
        return None
    strata = stratum_orders(shape, generator)  # each element's order of the strata
    place = torch.rand(n, generator=generator, dtype=_F64)
    levels = ((torch.arange(n, dtype=_F64) + place) / n).clamp(_U_EDGE, 1 - _U_EDGE)
    columns = [v[i[first]][:, None] for v, i in zip(distinct, inverses, strict=True)]
    table = quantile(*columns, levels.numpy()[None, :])  # [U, n]
    back = cdf(*columns, table)
    ends = (table == 0) | ~np.isfinite(table) | (back == 1.0) & (table >= 1)
    if not bool(((np.abs(back - levels.numpy()) <= 1e-6) | ends).all()):
        return None
    element = torch.from_numpy(element.reshape(parameters.shape[:-1]))
    return torch.from_numpy(table)[element.expand(strata.shape), strata]


def _covering_draw(family, q, shape: torch.Size, generator) -> torch.Tensor:
    """``shape`` = [n] points of a Categorical or Bernoulli q [*batch], each element going
    through the states q gives mass in its own random order (all of them when n allows,
    again from the first when there are fewer, n distinct ones when there are more). Drawn
    from q, a state it gives 0.1 is missed by all of 16 points with probability 0.9¹⁶ =
    0.19: a Bernoulli switch that turned a clamp on (q(s = 1) = 0.1) was accepted at 8
    seeds of 40, 0.10 nats above the model's log evidence, and a global Categorical whose
    last of 6 states took a tanh link at 13 of 20 (tester 36's F1, F2). The states are
    finite, so the check reaches each; a state of mass 0 (the model's log-density −inf
    there) is left out."""
    probs = q.probs.to(_F64)
    if isinstance(family, BernoulliFamily):
        probs = torch.stack([1 - probs, probs], -1)
    support = probs > 0
    keys = torch.rand(probs.shape, generator=generator, dtype=_F64)
    order = torch.where(support, keys, math.inf).argsort(-1)  # q's states first, shuffled
    states = support.sum(-1)  # [*batch]
    step = torch.arange(shape.numel(), device=probs.device).reshape(shape + (1,) * states.dim())
    at = (step % states).unsqueeze(-1)  # [n, *batch, 1]
    drawn = order.expand(shape + order.shape).gather(-1, at).squeeze(-1)
    return drawn.to(probs.dtype) if isinstance(family, BernoulliFamily) else drawn


def _draw(family, q, shape: torch.Size, generator):
    """``shape`` draws from ``q``, seeded by ``generator`` (torch's continuous samplers take
    no generator: they run under a seed drawn from it, the global RNG restored after).
    Positive and simplex draws are kept inside their support's edge: a Gamma(10⁻⁴, ·) or
    Beta(10⁻⁸, ·) draw underflows to 0, whose log is −inf, and any point of the support
    checks the form equally; except that a probability below float64's eps is torch's
    rounding guard's, not the model's (:data:`_PROBABILITY_FLOOR`: an LDA's topic-word
    Dirichlet widened drew 4e-26, which the Categorical scored as 2.2e-16, and a conjugate
    model was refused as a 22-nat kink)."""
    if isinstance(family, CategoricalFamily):
        probs = q.probs.to(_F64)
        flat = probs.reshape(-1, probs.shape[-1])
        drawn = torch.multinomial(flat, shape.numel(), replacement=True, generator=generator)
        return drawn.T.reshape(shape + probs.shape[:-1])
    if isinstance(family, BernoulliFamily):
        probs = q.probs.to(_F64).expand(shape + q.probs.shape)
        return torch.bernoulli(probs, generator=generator)
    with cpu_rng(int(torch.randint(0, 2**62, (), generator=generator))):
        if isinstance(q, (NormalGamma, NormalWishart)):
            return _block_draw(q, shape)
        drawn = wishart_draw(q, shape) if isinstance(q, dist.Wishart) else q.sample(shape)
        drawn = drawn.to(_F64)
    if isinstance(family, BetaFamily):
        return drawn.clamp(_PROBABILITY_FLOOR, 1 - _PROBABILITY_FLOOR)
    if isinstance(family, DirichletFamily):
        drawn = drawn.clamp_min(_PROBABILITY_FLOOR)
        return drawn / drawn.sum(-1, keepdim=True)
    if isinstance(family, (GammaFamily, GammaVectorFamily)):
        return torch.maximum(drawn, _GAMMA_FLOOR * q.mean).clamp_min(_TINY)
    return drawn


def _block_draw(q, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ, τ or Λ) drawn from a block's q: the precision from its marginal, then μ from
    N(m, (τP)⁻¹) or N(m, (βΛ)⁻¹) given it."""
    marginal = q.precision_distribution()
    if isinstance(q, NormalGamma):
        precision = torch.maximum(marginal.sample(shape), _GAMMA_FLOOR * marginal.mean)
        precision = precision.clamp_min(_TINY)
    else:
        precision = wishart_draw(marginal, shape)
    return q.mean_given(precision).sample(), precision


def wishart_draw(q: torch.distributions.Wishart, shape: torch.Size) -> torch.Tensor:
    """``shape`` draws from ``q`` [*shape, *batch, D, D], from torch's global RNG, by the
    Bartlett decomposition (Smith & Hocking 1972): Λ = L A Aᵀ Lᵀ, L = chol(W), A lower
    triangular with A_ii = √χ²(ν − i) (i = 0 … D − 1) and A_ij ~ N(0, 1) below. torch's own
    sampler takes every draw for singular and redraws it up to ten times, with a warning
    (pytorch/pytorch#122021): ten times the time (0.8 ms of a mixture's 26 ms fit)."""
    d = q.event_shape[-1]
    df = q.df.expand(q.batch_shape).unsqueeze(-1) - torch.arange(d, dtype=q.df.dtype)
    a = torch.diag_embed(torch.distributions.Chi2(df).sample(shape).sqrt())
    rows, cols = torch.tril_indices(d, d, offset=-1)
    a[..., rows, cols] = torch.randn(shape + q.batch_shape + (len(rows),), dtype=a.dtype)
    root = q.scale_tril @ a
    return root @ root.mT


def worst_misfit(factors, latents: dict, frames: dict, values: dict, log_probs: dict,
                 trace, rounding: float = 0.0) -> Misfit | None:  # fmt: skip
    """The factor whose solved form misses the model's log-density the most at the points
    ``values`` (with the model's ``log_probs`` there, {site: [S, *shape]}), if any misses
    by more than both :data:`RTOL` of its size and :data:`ROUNDING_MARGIN` times
    ``rounding`` (nats, the estimated float64 rounding of the bound; at most
    :data:`ROUNDING_CAP` of its size); else None.
    ``frames``: those the factors were solved in (their local coefficients are used, with
    the points' statistics in those coordinates)."""
    count = next(iter(values.values())).shape[0]
    statistics = {}
    for name, latent in latents.items():
        point = tuple(values[s] for s in latent.sites)
        if name in frames:
            point = to_local(latent.family, frames[name], point)
        statistics[name] = latent.family.statistics(*point)  # [S, *batch, B]
    conditioning = _precision_conditioning(latents, values, count)
    worst = None
    for factor in factors:
        if not factor.latents and factor.selector is None:
            error, size = _constant_misfit(factor, log_probs[factor.name], count)
            allowed = CONSTANT_RTOL * (1 + size)  # no solve: only the model's own rounding
        else:
            error, size, moving = _misfit_at(factor, statistics, log_probs[factor.name], count)
            rounded = torch.clamp(_point_rounding(factor, statistics, count), min=rounding)
            members = set(factor.latents) | {factor.selector}
            if members & set(conditioning):  # the model's own rounding at Λ there
                model = max(conditioning[n] for n in members & set(conditioning))
                rounded = torch.maximum(rounded, _EPS * model * (1 + size))
            excused = torch.minimum(ROUNDING_CAP * (1 + size), ROUNDING_MARGIN * rounded)
            allowed = torch.maximum(RTOL * (1 + moving), excused)
        error = torch.where(error.isfinite(), error, torch.inf)  # ±inf or NaN where q lies
        p = int((error / allowed).argmax())
        if float(error[p] / allowed[p]) > 1 and (worst is None or float(error[p]) > worst.misfit):
            members = ((factor.selector,) if factor.selector else ()) + factor.latents
            distribution = distribution_name(trace.nodes[factor.name])
            relative = float(error[p] / (1 + size[p]))
            reads = bool(set(members) & set(conditioning))
            worst = Misfit(factor.name, distribution, members, float(error[p]), relative, reads)
    return worst


def _precision_conditioning(latents: dict, values: dict, count: int) -> dict:
    """{Wishart or Normal-Wishart unit: the largest condition number of its precision at
    each of the ``count`` points, [S]}. A model scores a precision Λ through its Cholesky
    factor, and its log-density then rounds by about ε·cond(Λ) of its size: widened points
    of a q already conditioned 10⁵ (a Wishart prior of scale 10⁵ I and one datum) reach
    10⁸ and more, where valid factors missed by 10⁻⁸ of their size and were refused as
    kinks (tester 33's F1). At least the median over the points drawn from q itself (the
    first third): the factors were solved from log-densities at points conditioned as q's
    are and carry their rounding to every point, the well-conditioned ones too (points
    made more isotropic than q's draws, well conditioned where q was conditioned 10¹⁰,
    missed by 2e-8 to 1e-7 of the factor's size: 7 of tester 34's 108 valid Wisharts).
    A kink's misfit is of order its jump, not ε·cond."""
    out = {}
    for name, latent in latents.items():
        if _is_precision(latent.family):
            lam = values[latent.sites[-1]].to(_F64)
            cond = torch.linalg.cond(lam).reshape(count, -1).amax(-1)
            cond = torch.where(cond.isfinite(), cond, torch.inf)
            out[name] = torch.maximum(cond, cond[: count // 3].median())
    return out


def _point_rounding(factor, statistics: dict, count: int) -> torch.Tensor:
    """The float64 error of ``factor``'s solved form at each of the ``count`` points, [S]
    (nats): :func:`~pyro_vae.cavi.probe_frames.numerical_error`'s κ·ε·M (M its magnitude at
    the fit points) times the largest statistic of each member there, in the coordinates it
    was solved in, in place of E_q[T]. A point in q's tail, or the widened q's, reads
    coefficients solved near q's middle at statistics larger than there: a Normal-Wishart
    block of data 10⁴ spreads from zero (its q(Λ) conditioned 10⁶ by the mean's prior)
    missed by 10⁻⁴ of its size at such points, beyond the bound's rounding at q. 0 for a
    mixture factor (its magnitude counts data read at far components, whose coefficients
    weigh nothing where z is not: :func:`~pyro_vae.cavi.probe_frames.numerical_error`
    charges them per component; the bound's rounding stands for them)."""
    if factor.selector is not None:
        return torch.zeros(count, dtype=_F64)
    reach = torch.ones(count, dtype=_F64)
    for name in factor.latents:
        reach = reach * statistics[name].abs().reshape(count, -1).amax(-1).clamp_min(1)
    return _KAPPA * _EPS * factor.magnitude * reach


def _misfit_at(factor, statistics: dict, actual: torch.Tensor, count: int):
    """(Σ_elements |predicted − log f|, Σ_elements |log f|, Σ_elements |log f − its mean
    over the points|) at each of the ``count`` points, [S] each: the solved form (its local
    coefficients where it has them) against the model's log-density ``actual`` [S, …]
    there; the last is the part of log f that moves with the latents (a latent-free part,
    a constant or an event's far coordinates, counted in the size hid non-conjugacy behind
    10⁻⁹ of it: tester DL)."""
    solved = factor if factor.local is None else replace(factor, coefficients=factor.local)
    predicted = _predicted(solved, statistics, count)  # [S, *batch]
    actual = actual.to(_F64)
    if factor.rows is None:
        size = summed_to(actual.abs(), predicted.shape).reshape(count, -1).sum(-1)
        actual = summed_to(actual, predicted.shape)
    else:  # summed by group, as its coefficients were
        size = sum_by_rows(actual.abs(), factor.rows, predicted.shape[1:])
        size = size.reshape(count, -1).sum(-1)
        actual = sum_by_rows(actual, factor.rows, predicted.shape[1:])
    moving = (actual - actual.mean(0)).abs().reshape(count, -1).sum(-1)
    return (predicted - actual).abs().reshape(count, -1).sum(-1), size, moving


def _constant_misfit(factor, actual: torch.Tensor, count: int):
    """:func:`_misfit_at` for a factor the provenance run saw read no latent (an observed
    site of constants, a ``pyro.factor`` of data): its total log f at each point against
    the constant it was solved to. It moves only where an op hid a latent from Pyro's
    provenance tracking (``torch.mul(mu, 1, out=buf)``, ``torch.func.vmap``), which the
    factor's constant at the probe points cannot show when they all lie on one side of a
    kink (tester 16's F9: 46.6 nats above log p(y), silently)."""
    actual = actual.to(_F64).reshape(count, -1)
    predicted = factor.coefficients.to(_F64).sum()
    return (actual.sum(-1) - predicted).abs(), actual.abs().sum(-1)


def _predicted(factor, statistics: dict, count: int) -> torch.Tensor:
    """log f by ``factor``'s form at each of the ``count`` points, [S, *batch] (a mixture's
    K-axis summed): C contracted with each point's statistics (a point mass's E[T]), as
    :func:`~pyro_vae.cavi.expectations.contract` contracts, the points one more leading
    dim of every operand."""
    c = factor.coefficients.unsqueeze(0)  # [1, *batch, B₁, …]
    remaining = list(factor.latents)
    for name in reversed(factor.latents):
        stats = read_statistics(factor, name, statistics[name], 1)  # [S, *batch, B]
        view = (count,) + batch_view(factor, name, stats.shape[1:-1])
        view += tuple(stats.shape[-1] if m == name else 1 for m in remaining)
        c = product_sum(c, stats.reshape(view), 1 + factor.rank + remaining.index(name))
        remaining.remove(name)
    if factor.selector is not None:  # its one-hot [S, *batch_z, K] against the K-axis
        chosen = read_statistics(factor, factor.selector, statistics[factor.selector], 1)
        view = (count,) + (1,) * (factor.rank - chosen.dim() + 1) + tuple(chosen.shape[1:])
        c = product_sum(c, chosen.reshape(view), factor.rank)
    return c
