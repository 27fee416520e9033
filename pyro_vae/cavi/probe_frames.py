"""Local coordinates for ``AutoCAVI``'s probe points: probing a factor where q is.

``AutoCAVI`` solves each factor's coefficients C in log f = C·T from the factor's
log-density at random probe points. Drawn once at a fixed place (a Normal latent at
N(0, 1)), the points can lie far from where q puts its mass: with data near 10⁶ the
log-density there is about −10¹², float64 keeps it to about 10⁻⁴, and the curvature
coefficient, multiplied by E_q[μ²] ≈ 10¹², comes out millions of nats wrong. A *frame*
puts the points at q's location and scale, x = m + L·v, with v drawn as before, and the
factor is solved in the local statistics T(v): values of order one there, so the solve is as
accurate as float64 allows. The local coefficients D map back exactly to the natural ones:
T(v) = N·T(x) for a matrix N of the frame (:func:`local_map`), so D·T(v) = (NᵀD)·T(x) and
C = NᵀD.

Frames per family (they take away location, scale and, for a vector, correlation; the
families with bounded statistics, Beta, Dirichlet, Bernoulli and Categorical, need none):

    Normal:          v = L⁻¹(x − m)           (L: the Cholesky factor of q's covariance)
    Gamma:           u = x / c                (c = E_q[x])
    Wishart:         Λ̃ = R⁻¹ Λ R⁻ᵀ             (R: the Cholesky factor of E_q[Λ])
    Normal-Gamma:    v = L⁻¹(μ − m), u = τ / c  (L Lᵀ: q's covariance of μ at τ = E_q[τ])
    Normal-Wishart:  v = Rᵀ(μ − m) / s, Λ̃ = R⁻¹ Λ R⁻ᵀ  (R as Wishart's, s = β^−½)

Frames whiten q's covariance, not just its scales: the weights of a regression on an
intercept and a regressor near 2000 have a posterior correlation of about −0.999999, and
points drawn with the marginal scales alone lie off that ridge, where the likelihood is 10⁶
times its size on it (the bound came out 1.8e-3 nats high); a mixture on features in
different units (one of order 0.01, one near 5·10⁴ ± 10³) has precisions 10¹⁰ apart, which
probes scaled by one number put 10¹⁰ times too high or low (a bound 1.6e-3 nats off).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import pyro.distributions as dist
import torch
from pyro.ops.provenance import detach_provenance

from pyro_vae.cavi.data_indexing import read_by_index
from pyro_vae.cavi.exponential_families import (
    Family,
    GammaFamily,
    GammaVectorFamily,
    NormalFamily,
    NormalGamma,
    NormalGammaFamily,
    NormalWishart,
    NormalWishartFamily,
    WishartFamily,
    _normal_moments,
    _normal_root,
    gamma_shape_rate,
    unwrapped,
)
from pyro_vae.cavi.mixture_components import k_dim

_F64 = torch.float64


@dataclass
class Frame:
    """x = loc + scale_tril·v (Normal, Normal-Gamma's mean), Λ = scale_tril·Λ̃·scale_trilᵀ
    (Wishart, Normal-Wishart's precision), μ = loc + scale·scale_tril⁻ᵀ·v (Normal-Wishart's
    mean) and x = magnitude·u (Gamma, Normal-Gamma's precision); fields a family does not
    use are None. Shapes: loc [*batch, d], scale_tril [*batch, d, d] (lower triangular, a
    positive diagonal), scale [*batch], magnitude [*batch]."""

    loc: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    magnitude: torch.Tensor | None = None
    scale_tril: torch.Tensor | None = None


def has_frames(family: Family) -> bool:
    """Whether ``family``'s statistics are unbounded, so that its probes need a frame."""
    return isinstance(
        family,
        (NormalFamily, GammaFamily, GammaVectorFamily, WishartFamily, NormalGammaFamily,
         NormalWishartFamily),
    )  # fmt: skip


def frame_of(family: Family, q) -> Frame | None:
    """The frame at q's location and scale, or None for a family without frames."""
    if isinstance(family, NormalFamily):
        mean, root = _normal_root(q, family.event_dim)
        return Frame(mean, scale_tril=root)
    if isinstance(family, (GammaFamily, GammaVectorFamily)):  # per coordinate, for a vector
        shape, rate = gamma_shape_rate(unwrapped(q))
        return Frame(magnitude=shape / rate)
    if isinstance(family, WishartFamily):  # E_q[Λ] = ν·V: R = √ν·chol(V)
        root = q.df.to(_F64).sqrt()[..., None, None] * q.scale_tril.to(_F64)
        return Frame(scale_tril=root)
    if isinstance(q, NormalGamma):
        tau = q.concentration / q.rate
        root = _precision_root(q.precision) * tau.rsqrt()[..., None, None]
        return Frame(q.loc, magnitude=tau, scale_tril=root)
    if isinstance(q, NormalWishart):  # μ's covariance ≈ (β E[Λ])⁻¹ = R⁻ᵀR⁻¹/β
        return Frame(q.loc, q.beta.rsqrt(), scale_tril=_root(q.df[..., None, None] * q.scale))
    return None


def _root(spd: torch.Tensor) -> torch.Tensor:
    """The Cholesky factor of a symmetric positive-definite matrix, or, where rounding
    leaves it indefinite, the square roots of its diagonal (a frame needs only a scale)."""
    root, info = torch.linalg.cholesky_ex(spd)
    if not bool((info != 0).any()):
        return root
    diagonal = torch.diag_embed(spd.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt())
    return torch.where((info != 0)[..., None, None], diagonal, root)


def _precision_root(precision: torch.Tensor) -> torch.Tensor:
    """Lower triangular L with L Lᵀ = precision⁻¹, without forming the inverse (the
    reversed-order Cholesky factorization torch's ``MultivariateNormal`` uses)."""
    flipped = torch.linalg.cholesky(torch.flip(precision, (-2, -1)))
    inverse_root = torch.flip(flipped, (-2, -1)).transpose(-2, -1)
    eye = torch.eye(precision.shape[-1], dtype=precision.dtype)
    return torch.linalg.solve_triangular(inverse_root, eye, upper=False)


def from_local(family: Family, frame: Frame, value):
    """Probe values in the model's coordinates from standard ones (``family.probe``'s)."""
    if isinstance(family, (GammaFamily, GammaVectorFamily)):
        return frame.magnitude * value
    if isinstance(family, WishartFamily):
        return _congruent(frame.scale_tril, value)
    if isinstance(family, NormalWishartFamily):
        mu, positive = value
        upper = frame.scale_tril.transpose(-1, -2).expand(mu.shape[:-1] + positive.shape[-2:])
        step = torch.linalg.solve_triangular(upper, mu.unsqueeze(-1), upper=True).squeeze(-1)
        return frame.loc + frame.scale.unsqueeze(-1) * step, _congruent(frame.scale_tril, positive)
    if isinstance(family, NormalFamily):
        return _affine(frame, value, not family.event_dim)
    mu, positive = value
    return _affine(frame, mu, family.scalar), frame.magnitude * positive


def to_local(family: Family, frame: Frame, values: tuple) -> tuple:
    """The local coordinates of model values ``values`` (one per site of the unit)."""
    if isinstance(family, (GammaFamily, GammaVectorFamily)):
        return (values[0].to(_F64) / frame.magnitude,)
    if isinstance(family, WishartFamily):
        return (_congruent(_whitening(frame), values[0].to(_F64)),)
    if isinstance(family, NormalFamily):
        return (_unaffine(frame, values[0].to(_F64), not family.event_dim),)
    mu, positive = (v.to(_F64) for v in values)
    if isinstance(family, NormalWishartFamily):
        upper = frame.scale_tril.transpose(-1, -2)
        v = (upper @ (mu - frame.loc).unsqueeze(-1)).squeeze(-1) / frame.scale.unsqueeze(-1)
        return v, _congruent(_whitening(frame), positive)
    return _unaffine(frame, mu, family.scalar), positive / frame.magnitude


def _affine(frame: Frame, v: torch.Tensor, scalar: bool) -> torch.Tensor:
    """x = m + L·v (``scalar``: a mean site with no event dim, d = 1)."""
    if scalar:
        return frame.loc[..., 0] + frame.scale_tril[..., 0, 0] * v
    return frame.loc + (frame.scale_tril @ v.unsqueeze(-1)).squeeze(-1)


def _unaffine(frame: Frame, x: torch.Tensor, scalar: bool) -> torch.Tensor:
    """v = L⁻¹(x − m), by triangular solve."""
    if scalar:
        return (x - frame.loc[..., 0]) / frame.scale_tril[..., 0, 0]
    delta = (x - frame.loc).unsqueeze(-1)
    root = frame.scale_tril.expand(delta.shape[:-2] + frame.scale_tril.shape[-2:])
    return torch.linalg.solve_triangular(root, delta, upper=False).squeeze(-1)


def _whitening(frame: Frame) -> torch.Tensor:
    """B = L⁻¹ [*batch, d, d]: v = B(x − m)."""
    eye = torch.eye(frame.scale_tril.shape[-1], dtype=_F64)
    return torch.linalg.solve_triangular(frame.scale_tril, eye, upper=False)


def _congruent(root: torch.Tensor, spd: torch.Tensor) -> torch.Tensor:
    """root·S·rootᵀ, symmetrized (the two triangles equal to the last bit)."""
    product = root @ spd @ root.transpose(-1, -2)
    return (product + product.transpose(-1, -2)) / 2


def local_map(family: Family, frame: Frame) -> torch.Tensor:
    """N [*batch, B, B] with T(local coordinates of x) = N·T(x) for every x, exactly."""
    if isinstance(family, NormalFamily):
        return _affine_map(frame, family._rows, family._cols)
    if isinstance(family, (GammaFamily, GammaVectorFamily)):  # T = (1, x_1…x_D, log x_1…x_D)
        c = _magnitudes(family, frame)
        d = c.shape[-1]
        n = _identity(c.shape[:-1], 1 + 2 * d)
        coordinates = torch.arange(1, 1 + d)
        n[..., coordinates, coordinates] = 1 / c
        n[..., coordinates + d, 0] = -c.log()
        return n
    if isinstance(family, WishartFamily):  # T = (1, Λ_ij, log|Λ|), Λ̃ = BΛBᵀ (B = R⁻¹)
        b = _whitening(frame)
        n = _identity(b.shape[:-2], family.size)
        n[..., 1:-1, 1:-1] = _pair_block(b, family._rows, family._cols)
        n[..., -1, 0] = -2 * _log_det(frame.scale_tril)
        return n
    if isinstance(family, NormalGammaFamily):
        return _normal_gamma_map(frame, family._rows, family._cols)
    return _normal_wishart_map(frame, family.d, family._rows, family._cols)


def _magnitudes(family: Family, frame: Frame) -> torch.Tensor:
    """A Gamma frame's magnitude per coordinate, [*batch, D] (D = 1 for a scalar Gamma, whose
    statistics (1, x, log x) are a Gamma vector's with one coordinate)."""
    return frame.magnitude if isinstance(family, GammaVectorFamily) else frame.magnitude[..., None]


def _identity(batch: torch.Size, size: int) -> torch.Tensor:
    return torch.eye(size, dtype=_F64).expand(batch + (size, size)).clone()


def _affine_map(frame: Frame, rows, cols) -> torch.Tensor:
    """T = (1, x_a, x_i x_j for i ≤ j), v = B(x − m) (B = L⁻¹, Bm = B·m):
    v_a = Σ_b B_ab x_b − (Bm)_a and
    v_i v_j = Σ_bc B_ib B_jc x_b x_c − (Bm)_j (Bx)_i − (Bm)_i (Bx)_j + (Bm)_i (Bm)_j,
    where x_b x_c (b < c) is one statistic, taking B_ib B_jc + B_ic B_jb."""
    b = _whitening(frame)
    shift = (b @ frame.loc.unsqueeze(-1)).squeeze(-1)
    d, pairs = b.shape[-1], len(rows)
    n = torch.zeros(b.shape[:-2] + (1 + d + pairs,) * 2, dtype=_F64)
    n[..., 0, 0] = 1
    n[..., 1 : 1 + d, 1 : 1 + d] = b
    n[..., 1 : 1 + d, 0] = -shift
    b_i, b_j = b[..., rows, :], b[..., cols, :]  # [*batch, pairs, d]
    n[..., 1 + d :, 1 + d :] = _pair_block(b, rows, cols)
    n[..., 1 + d :, 1 : 1 + d] = -(shift[..., cols, None] * b_i + shift[..., rows, None] * b_j)
    n[..., 1 + d :, 0] = shift[..., rows] * shift[..., cols]
    return n


def _pair_block(b: torch.Tensor, rows, cols) -> torch.Tensor:
    """[*batch, pairs, pairs]: the entries (i ≤ j) of B·S·Bᵀ in those (a ≤ b) of a symmetric
    S, where an entry a < b stands for S_ab and S_ba: B_ia B_jb + B_ib B_ja, and B_ia B_ja on
    the diagonal (x xᵀ's pairs for a Normal's v = B(x − m), Λ's for a Wishart's)."""
    b_i, b_j = b[..., rows, :], b[..., cols, :]  # [*batch, pairs, d]
    outer = b_i.unsqueeze(-1) * b_j.unsqueeze(-2)  # [*batch, pairs, d, d]: B_ia B_jb
    both = outer + outer.transpose(-1, -2)
    return torch.where(rows == cols, outer[..., rows, cols], both[..., rows, cols])


def _log_det(root: torch.Tensor) -> torch.Tensor:
    """log|R| of a triangular R with a positive diagonal."""
    return root.diagonal(dim1=-2, dim2=-1).log().sum(-1)


def _normal_gamma_map(frame: Frame, rows, cols) -> torch.Tensor:
    """T = (1, τ, log τ, τμ_a, τμ_iμ_j for i ≤ j), u = τ/c, v = B(μ − m): the local
    statistics (1, u, log u, u v_a, u v_i v_j) in the natural ones; u v_a and u v_i v_j are
    :func:`_affine_map`'s rows for μ with τ in place of the constant, over c."""
    c = frame.magnitude
    affine = _affine_map(frame, rows, cols)[..., 1:, :] / c[..., None, None]
    size = affine.shape[-1] + 2
    n = torch.zeros(c.shape + (size, size), dtype=_F64)
    n[..., 0, 0] = 1
    n[..., 1, 1] = 1 / c
    n[..., 2, 2] = 1
    n[..., 2, 0] = -c.log()
    n[..., 3:, 1] = affine[..., 0]
    n[..., 3:, 3:] = affine[..., 1:]
    return n


def _normal_wishart_map(frame: Frame, d: int, rows, cols) -> torch.Tensor:
    """T = (1, Λ_ab for a ≤ b, log|Λ|, (Λμ)_a, μᵀΛμ), Λ̃ = BΛBᵀ (B = R⁻¹),
    v = Rᵀ(μ − m)/s: Λ̃v = B(Λμ − Λm)/s, vᵀΛ̃v = (μᵀΛμ − 2mᵀΛμ + mᵀΛm)/s²."""
    m, s = frame.loc, frame.scale
    b = _whitening(frame)
    pairs = len(rows)
    size, logdet, first, quad = 1 + pairs + 1 + d + 1, 1 + pairs, 2 + pairs, 2 + pairs + d
    n = torch.zeros(m.shape[:-1] + (size, size), dtype=_F64)
    n[..., 0, 0] = 1
    n[..., 1:logdet, 1:logdet] = _pair_block(b, rows, cols)
    n[..., logdet, logdet] = 1
    n[..., logdet, 0] = -2 * _log_det(frame.scale_tril)
    over_s = (1 / s)[..., None, None]
    n[..., first:quad, first:quad] = b * over_s
    # Σ_ab B_ia m_b Λ_ab on Λ's pairs: B_ia m_b + B_ib m_a off the diagonal, B_ia m_a on it
    at_a, at_b = b[..., :, rows] * m[..., None, cols], b[..., :, cols] * m[..., None, rows]
    n[..., first:quad, 1:logdet] = -torch.where(rows == cols, at_a, at_a + at_b) * over_s
    over_s2 = 1 / (s * s)
    n[..., quad, quad] = over_s2
    n[..., quad, first:quad] = -2 * m * over_s2.unsqueeze(-1)
    products = m[..., rows] * m[..., cols]
    doubled = torch.where(rows == cols, products, 2 * products)
    n[..., quad, 1:logdet] = doubled * over_s2.unsqueeze(-1)
    return n


def reach(family: Family, frame: Frame | None, q, expected: torch.Tensor) -> float:
    """max |E_q[T(v)]| in the frame (about 1 where q sits in it): how far the probe region
    must be extrapolated to reach q. ``expected``: E_q[T(x)], [*batch, B], which is the
    answer without a frame (the family's fixed probe place)."""
    reached = element_reach(family, frame, q, expected)
    return float(reached.max()) if reached.numel() else 1.0


def movable_reach(family: Family, frame: Frame | None, q, expected: torch.Tensor) -> float:
    """:func:`reach` less what no frame can remove: a Gamma q's E_q[log(x / E_q x)] =
    ψ(a) − log a (−10⁴ for a shape of 10⁻⁴, a Poisson rate under a Gamma(10⁻⁴, 10⁻⁴) prior
    with a count of 0), which every frame x = c·u leaves in E_q[log u]. Re-probing is
    decided on this; the rounding estimate still multiplies by all of E_q[T]."""
    if not isinstance(family, GammaFamily) or q is None:
        return reach(family, frame, q, expected)
    if frame is not None:
        expected = local_expected_statistics(family, q, frame)
    a = q.concentration.to(_F64)
    own = torch.digamma(a) - a.log()
    movable = torch.stack([expected[..., 1], expected[..., 2] - own], -1).abs().amax(-1)
    return float(movable.max()) if movable.numel() else 1.0


def element_reach(family: Family, frame: Frame | None, q, expected: torch.Tensor):
    """:func:`reach` per element: [*batch]."""
    if frame is not None:
        expected = local_expected_statistics(family, q, frame)
    return expected.abs().amax(-1)


#: Allowance for the condition number of a probe design (random designs of this package's
#: families measure about 10 to 100 in their local coordinates).
_KAPPA = 100.0
_EPS = torch.finfo(_F64).eps


def numerical_error(factors, latents: dict, q: dict, stats: dict, frames: dict,
                    unframed: bool = False, local: dict | None = None):  # fmt: skip
    """(estimated float64 error of Σ_f E_q[log f] in nats, the largest amplification).

    A factor solved from log-densities of magnitude M (its ``magnitude``: Σ over elements of
    the largest |log f| at the fit points) has coefficients in error by about κ·ε·M in the
    coordinates it was solved in (solved on its support, the columns left out held no more
    than that: :mod:`~pyro_vae.cavi.factor_support`); E_q[log f] multiplies that by E_q[T]
    there, whose largest entry, over the members with frames, is the factor's
    amplification (about 1 when q sits where the points were drawn, E_q[μ²] ≈ 10¹² for data
    near 10⁶ probed at N(0, 1)).
    ``q``: the units' factors; ``stats``: E_q[T] on the natural statistics; ``frames``:
    those the factors were solved in (a unit absent: its family's fixed probe place).

    A mixture solved one component at a time (``component_magnitudes``) is charged per
    element and component: component k's magnitude there, times E_q[z = k], times k's own
    amplification. A datum near 0 read at a component near 10⁶ has |log f| ≈ 10¹², but
    component k's coefficients for it count in E_q[log f] only in proportion to E_q[z = k],
    which is then 0 to float64.

    ``unframed``: also multiply each factor's error by E_q[T] of its members without frames
    (Beta, Dirichlet: E_q[log p] ≈ −1/a, −10⁸ for a Beta(10⁻⁸, ·) prior with no successes
    in 10⁶ trials), which no frame can bring nearer and so is left out of the
    amplification that decides re-probing.

    The amplification returned is the largest product of :func:`movable_reach`, what a
    frame around q could remove.

    ``local``: {unit: E_q[T] in its frame} where the caller has them (a sweep's
    :func:`local_expected_statistics`, kept per q and frame), else each is found here once.

    Returns (nats, amplification)."""
    total, worst = 0.0, 1.0
    reaches = {}  # unit -> (reach, movable reach), each found once however many factors
    mixtures = {}  # mixture factors alike (an HMM's T steps), charged in one operation
    expected = {}  # unit -> E_q[T] where the points were drawn (in its frame, if it has one)

    def expected_of(name):
        if name not in expected:
            frame, unit_q = frames.get(name), q.get(name)
            if frame is None or unit_q is None:
                expected[name] = stats[name]
            elif local is not None and name in local:
                expected[name] = local[name]
            else:
                expected[name] = local_expected_statistics(latents[name].family, unit_q, frame)
        return expected[name]

    for factor in factors:
        amplification, bounded, movable = 1.0, 1.0, 1.0
        for name in factor.latents:
            family = latents[name].family
            framed = has_frames(family)
            if not framed and not unframed:
                continue
            if name not in reaches:  # in the frame's coordinates already: no frame to pass
                reaches[name] = _reaches(family, None, q.get(name), expected_of(name))
            reached, movable_here = reaches[name]
            if framed:
                amplification *= reached
                movable *= movable_here
            else:
                bounded *= reached
        worst = max(worst, movable)
        if factor.component_magnitudes is None:
            total += _KAPPA * _EPS * factor.magnitude * amplification * bounded
        else:
            framed = tuple((n, n in factor.components, k_dim(factor.components, n))
                           for n in factor.latents if has_frames(latents[n].family))  # fmt: skip
            alike = (framed, factor.selector in factor.index,
                     factor.component_magnitudes.shape, factor.rank, bounded)  # fmt: skip
            mixtures.setdefault(alike, []).append(factor)
    elements = {}  # unit -> its reach per element, found once however many mixtures
    for alike, group in mixtures.items():
        charged = _mixture_error(group, latents, q, stats, expected_of, elements)
        total += _KAPPA * _EPS * charged * alike[-1]
    return total, worst


def _reaches(family: Family, frame: Frame | None, q, expected: torch.Tensor):
    """(max(1, :func:`reach`), max(1, :func:`movable_reach`)) of one unit."""
    reached = max(1.0, reach(family, frame, q, expected))
    if not has_frames(family):
        return reached, 1.0
    if not isinstance(family, GammaFamily) or q is None:  # nothing a frame cannot remove
        return reached, reached
    return reached, max(1.0, movable_reach(family, frame, q, expected))


def _mixture_error(group: list, latents: dict, q: dict, stats: dict, expected_of,
                   elements: dict) -> float:  # fmt: skip
    """Σ over the factors of ``group``, their elements and components k of (k's magnitude
    there)·E_q[z = k]·(k's amplification): :func:`numerical_error` of mixture factors alike
    (the same latents, components and shapes: an HMM's steps), less κ·ε, in one operation
    (a chain of 500 steps had taken 30 ms a sweep factor by factor). ``expected_of(unit)``:
    its E_q[T] where the points were drawn (its frame's coordinates, or the natural ones);
    ``elements``: each unit's :func:`element_reach`, found once per call of
    :func:`numerical_error`."""
    factor = group[0]  # its framed latents, their roles and its shapes are the group's
    weights = torch.stack([stats[f.selector] for f in group])  # [F, *batch_z, K]
    if factor.selector in factor.index:  # a mixture of groups: each datum's group's
        weights = torch.stack([read_by_index(w, f.index[f.selector], 0)
                               for w, f in zip(weights, group, strict=True)])  # fmt: skip
    view = (len(group),) + (1,) * (factor.rank + 1 - weights.dim()) + tuple(weights.shape[1:])
    magnitudes = torch.stack([f.component_magnitudes for f in group])  # [F, *batch, K]
    charged = magnitudes * weights.reshape(view)
    for name in factor.latents:
        family = latents[name].family
        if not has_frames(family):
            continue
        if name not in elements:
            elements[name] = element_reach(family, None, q.get(name), expected_of(name))
        reached = elements[name]
        if name in factor.components:  # its batch dim along the K categories
            dim = k_dim(factor.components, name)
            reached = reached if dim is None else reached.movedim(dim, -1)
            per_component = reached.reshape(-1, reached.shape[-1]).amax(0)
            charged = charged * per_component.clamp(min=1.0)
        else:
            charged = charged * max(1.0, float(reached.max()) if reached.numel() else 1.0)
    return float(charged.sum())


def local_expected_statistics(family: Family, q, frame: Frame) -> torch.Tensor:
    """E_q[T(v)] in ``frame``'s coordinates, [*batch, B], from q's moments about the frame's
    centre: without the cancellation of N·E_q[T(x)] (terms of 10¹² that cancel to order one
    for data near 10⁶), so E_q[log f] summed from local coefficients keeps float64's
    precision."""
    if isinstance(family, NormalFamily):
        mean, cov = _normal_moments(q, family.event_dim)
        b = _whitening(frame)
        v = (b @ (mean - frame.loc).unsqueeze(-1)).squeeze(-1)
        second = b @ cov @ b.transpose(-1, -2) + v.unsqueeze(-1) * v.unsqueeze(-2)
        ones = torch.ones(v.shape[:-1] + (1,), dtype=_F64)
        return torch.cat([ones, v, second[..., family._rows, family._cols]], -1)
    if isinstance(family, (GammaFamily, GammaVectorFamily)):  # E[x_d / c_d], E[log x_d] − log c_d
        natural = family.expected_statistics(q)
        c = _magnitudes(family, frame)
        d = c.shape[-1]
        return torch.cat(
            [natural[..., :1], natural[..., 1 : 1 + d] / c, natural[..., 1 + d :] - c.log()], -1
        )
    if isinstance(family, WishartFamily):
        natural_mean = q.df.to(_F64)[..., None, None] * q.covariance_matrix.to(_F64)
        mean = _congruent(_whitening(frame), natural_mean)
        logdet = family.expected_statistics(q)[..., -1] - 2 * _log_det(frame.scale_tril)
        pairs = mean[..., family._rows, family._cols]
        return torch.cat([torch.ones_like(logdet).unsqueeze(-1), pairs, logdet.unsqueeze(-1)], -1)
    if isinstance(family, NormalGammaFamily):
        return _normal_gamma_local(family, q, frame)
    return _normal_wishart_local(family, q, frame)


def _normal_gamma_local(family: NormalGammaFamily, q: NormalGamma, frame: Frame) -> torch.Tensor:
    """(1, E u, E log u, E[u v_a], E[u v_i v_j]) with u = τ/c, v = B(μ − m): E[τ(μ − m)] =
    E[τ](m_q − m) and E[τ(μ − m)(μ − m)ᵀ] = P⁻¹ + E[τ](m_q − m)(m_q − m)ᵀ."""
    c, b = frame.magnitude, _whitening(frame)
    tau = q.concentration / q.rate
    log_u = torch.digamma(q.concentration) - q.rate.log() - c.log()
    delta = q.loc - frame.loc
    second = torch.linalg.inv(q.precision) + tau[..., None, None] * (
        delta.unsqueeze(-1) * delta.unsqueeze(-2)
    )
    second = b @ second @ b.transpose(-1, -2) / c[..., None, None]
    first = tau.unsqueeze(-1) * (b @ delta.unsqueeze(-1)).squeeze(-1) / c.unsqueeze(-1)
    parts = [torch.ones_like(c), tau / c, log_u]
    return torch.cat([torch.stack(parts, -1), first, second[..., family._rows, family._cols]], -1)


def _normal_wishart_local(family: NormalWishartFamily, q: NormalWishart, frame: Frame):
    """(1, E Λ̃_ij, E log|Λ̃|, E[Λ̃v], E[vᵀΛ̃v]) with Λ̃ = BΛBᵀ, v = Rᵀ(μ − m)/s: E[Λ̃v] =
    B E[Λ](m_q − m)/s and E[vᵀΛ̃v] = (D/β + (m_q − m)ᵀE[Λ](m_q − m))/s²."""
    s, d, b = frame.scale, family.d, _whitening(frame)
    mean_lam = q.df[..., None, None] * q.scale
    delta = q.loc - frame.loc
    lam_delta = (mean_lam @ delta.unsqueeze(-1)).squeeze(-1)
    quad = (d / q.beta + (delta * lam_delta).sum(-1)) / (s * s)
    logdet = q.expected_logdet - 2 * _log_det(frame.scale_tril)
    pairs = _congruent(b, mean_lam)[..., family._rows, family._cols]
    first = (b @ lam_delta.unsqueeze(-1)).squeeze(-1) / s.unsqueeze(-1)
    parts = [torch.ones_like(s).unsqueeze(-1), pairs, logdet.unsqueeze(-1), first]
    return torch.cat(parts + [quad.unsqueeze(-1)], -1)


_SANE = (1e-30, 1e30)  # a prior scale outside this is no guide to where to probe


def prior_frame(family: Family, fns: tuple) -> Frame | None:
    """A frame at the prior's location and scale (``fns``: the unit's sites' distributions
    in a forward run, conditional on the other latents' draws there), or None where the
    family takes no frame or the prior's scale is not a finite number in 1e-30..1e30.
    Plain tensors, whatever the run tracked (a frame made from the dependency run's
    provenance-tracked parameters carried that tracking into every factor probed in it,
    and q's parameters came out as a private tensor subclass)."""
    frame = _prior_frame(family, fns)
    if frame is None:
        return None
    given = {f.name: getattr(frame, f.name) for f in fields(frame)}
    return replace(frame, **{k: detach_provenance(v) for k, v in given.items() if v is not None})


def _prior_frame(family: Family, fns: tuple) -> Frame | None:
    if not has_frames(family):
        return None
    fns = tuple(unwrapped(fn) for fn in fns)
    if len(fns) == 1:  # a prior of the family's own form, as q is: q's frame
        frame = frame_of(family, fns[0])
    else:  # a block: its mean site's Normal and its precision site's Gamma or Wishart
        event_dim = 0 if getattr(family, "scalar", False) else 1
        loc, root = _normal_root(fns[0], event_dim)
        positive = fns[1].mean.to(_F64)
        if isinstance(family, NormalWishartFamily):  # s: v = Rᵀ(μ − m)/s of unit variance
            lam_root = _root(positive)
            scale = (lam_root.transpose(-1, -2) @ root).pow(2).sum((-2, -1)).div(family.d).sqrt()
            frame = Frame(loc, scale, scale_tril=lam_root)
        else:
            frame = Frame(loc, magnitude=positive, scale_tril=root)
    return frame if _sane(frame) else None


def _sane(frame: Frame) -> bool:
    for value in (frame.loc, frame.scale, frame.magnitude, frame.scale_tril):
        if value is None:
            continue
        size = value.abs()
        if not bool(size.isfinite().all()) or bool((size > _SANE[1]).any()):
            return False
    positive = [v for v in (frame.scale, frame.magnitude) if v is not None]
    if frame.scale_tril is not None:
        positive.append(frame.scale_tril.diagonal(dim1=-2, dim2=-1))
    return all(bool((v > _SANE[0]).all()) for v in positive)


def q_from_local(family: Family, q, frame: Frame):
    """q over the model's coordinates from q over ``frame``'s local ones (x = m + L·v,
    x = c·u): the update made where its natural parameters are of order one. Made in the
    model's coordinates, a Normal-Wishart's W⁻¹ = Σ xxᵀ − β m mᵀ + … subtracts terms of 10¹³
    for data near 10⁶."""
    if isinstance(family, NormalFamily):
        if not family.event_dim:
            a = frame.scale_tril[..., 0, 0]
            return dist.Normal(frame.loc[..., 0] + a * q.loc, a * q.scale, validate_args=False)
        # L times q's own Cholesky factor: lower triangular, x's, with no inverse taken
        return dist.MultivariateNormal(
            _affine(frame, q.loc, False),
            scale_tril=frame.scale_tril @ q.scale_tril,
            validate_args=False,
        )
    c = frame.magnitude
    if isinstance(family, GammaFamily):
        return dist.Gamma(q.concentration, q.rate / c, validate_args=False)
    if isinstance(family, GammaVectorFamily):
        a, b = gamma_shape_rate(unwrapped(q))
        return dist.Gamma(a, b / c, validate_args=False).to_event(1)
    if isinstance(family, WishartFamily):  # Λ = RΛ̃Rᵀ ~ Wishart(ν, R V Rᵀ)
        root = frame.scale_tril @ q.scale_tril
        return dist.Wishart(q.df, scale_tril=root, validate_args=False)
    if isinstance(family, NormalGammaFamily):
        b = _whitening(frame)  # μ|τ's precision τ·BᵀP̃B/c, from v|u's u·P̃
        precision = b.transpose(-1, -2) @ q.precision @ b / c[..., None, None]
        return NormalGamma(_affine(frame, q.loc, False), precision, q.concentration, q.rate / c,
                           q.scalar, q.precision_event)  # fmt: skip
    # μ = m + s·R⁻ᵀv, Λ = RΛ̃Rᵀ: β = β̃/s², W = R W̃ Rᵀ
    m, s, root = frame.loc, frame.scale, frame.scale_tril
    step = torch.linalg.solve_triangular(root.transpose(-1, -2), q.loc.unsqueeze(-1), upper=True)
    return NormalWishart(
        m + s.unsqueeze(-1) * step.squeeze(-1),
        q.beta / (s * s),
        _congruent(root, q.scale),
        q.df,
        q.logdet_scale + 2 * _log_det(root),
    )
