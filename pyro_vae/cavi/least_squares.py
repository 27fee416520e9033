"""The least-squares solve of a factor's coefficients from its log-densities at the fit points,
and its check at fresh points.

C is solved per element by QR (``gels``; the minimum-norm SVD solve where a design turns
out rank deficient), one solve with many right-hand sides where elements share a design, one
component at a time for a mixture, on a grid one member at a time
(:mod:`~pyro_vae.cavi.kronecker_probe`), or on the design's support
(:mod:`~pyro_vae.cavi.factor_support`); it is kept where it reproduces log f at the check
points to :data:`_RTOL` of the factor's scale (:func:`tolerance_scale`, :func:`solve_factor`).
"""

from __future__ import annotations

import math

import torch

from pyro_vae.cavi import factor_support
from pyro_vae.cavi.data_indexing import (
    apply_by_group,
)
from pyro_vae.cavi.exponential_families import (
    NotConjugateError,
)
from pyro_vae.cavi.factor_form import Factor
from pyro_vae.cavi.kronecker_probe import (
    axis_runs,
    kronecker_fit,
    on_support,
)
from pyro_vae.cavi.probe_counts import EXTRA_RUNS, has_discrete
from pyro_vae.cavi.probe_designs import aligned_statistics, group_layout, probe_design
from pyro_vae.cavi.probe_runs import (
    Runs,
    unexpanded_value,
)

_RTOL = 1e-7  # misfit allowed, relative to the factor's magnitude at the probe points


def summed_to(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum ``tensor`` over the leading dims it has beyond ``shape`` and the dims where
    ``shape`` is 1 (the reverse of broadcasting)."""
    while tensor.dim() > len(shape):
        tensor = tensor.sum(0)
    for dim, size in enumerate(shape):
        if size == 1 and tensor.shape[dim] != 1:
            tensor = tensor.sum(dim, keepdim=True)
    return tensor


def _fit(designs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Least-squares C per element: designs [S, *batch, P], values [S, *fbatch] → [*fbatch, P].

    Elements that share a design (its batch dim is 1 where the factor's is not: the data
    plate of a likelihood whose latents are global) are one solve with many right-hand
    sides, not one factorization per element."""
    shared = [i for i in range(1, values.dim()) if designs.shape[i] == 1 and values.shape[i] > 1]
    a = designs.movedim(0, -2)  # [*batch, S, P]
    if not shared:
        b = values.movedim(0, -1).unsqueeze(-1)  # [*fbatch, S, 1]
        # full column rank is ensured (enough_runs): QR least squares, ~5x faster than pinv
        return _lstsq(a, b).squeeze(-1)
    # the shared dims go last and become columns of the right-hand side
    rest = [i for i in range(1, values.dim()) if i not in shared]
    order = rest + [0] + shared
    b = values.permute(order)  # [*rest, S, *shared]
    b = b.reshape(b.shape[: len(rest) + 1] + (-1,))
    a = a.squeeze(tuple(i - 1 for i in shared))  # [*rest, S, P]
    solution = _lstsq(a, b)  # [*rest, P, Π shared]
    solution = solution.reshape(solution.shape[:-1] + tuple(values.shape[i] for i in shared))
    # back to [*fbatch, P]: P is at position len(rest), the shared dims after it
    positions = {dim: k for k, dim in enumerate(rest)}
    positions.update({dim: len(rest) + 1 + k for k, dim in enumerate(shared)})
    perm = [positions[i] for i in range(1, values.dim())] + [len(rest)]
    return solution.permute(perm)


def _fit_mixture(designs: torch.Tensor, values: torch.Tensor, selector: torch.Tensor, k: int):
    """:func:`_fit` of a mixture's design [z = k] ⊗ T(θ_z), one component at a time where
    the fit points hold z at one value across its plate (as they do): the design is
    block-diagonal over k, and a joint solve lets the log-densities of the rows picking one
    component (−10¹² for data near 0 read at a component near 10⁶) round into another's
    coefficients. Falls back to the joint solve otherwise. Where every component has as
    many points (the fit points are balanced), the K solves are one batched call: an HMM's
    step picking one of K = 8 rows made eight."""
    size = designs.shape[-1] // k
    rows = _component_rows(selector, k, size)
    if rows is None:
        return _fit(designs, values)
    # each block's columns sliced (a view) before its rows are gathered: gathering the rows
    # of the whole design first copied all K blocks K times (an HMM step at K = 8: 1.1 ms)
    blocks = [designs[..., j * size : (j + 1) * size][r] for j, r in enumerate(rows)]
    picked = [values[r] for r in rows]
    if len({len(block) for block in blocks}) == 1:  # balanced points: one batched solve
        solved = _fit(torch.stack(blocks, 1), torch.stack(picked, 1))  # [K, *fbatch, size]
        return solved.movedim(0, -2).flatten(-2)
    return torch.cat([_fit(b, v) for b, v in zip(blocks, picked, strict=True)], -1)


#: Components whose solved coefficients differ by at most this, relative to 1 + the first
#: component's, are tried as one (:func:`_shared_components`); the check points then decide.
_SHARED_RTOL = 1e-9
#: Mixture coefficients of fewer elements are kept per component: their contractions are
#: made and summed (see :func:`~pyro_vae.cavi.expectations.product_sum`), and testing the
#: blocks and checking their mean cost an HMM's 399 step factors 80 ms of probing.
_SHARED_FROM = 1 << 16


def _shared_components(coefficients: torch.Tensor, k: int) -> torch.Tensor | None:
    """A mixture's coefficients [*fbatch, K·P] with every component's block set to their mean, where
    the K blocks agree to :data:`_SHARED_RTOL` (a likelihood whose form is the same for every
    component, as a Gaussian mixture's: its K solves differ by rounding, 8e-12 of 124 at N = 3,000),
    and they hold :data:`_SHARED_FROM` elements or more; else None. :func:`solve_factor` keeps them
    only where they reproduce log f at the check points as well as the K blocks do, to rounding, and
    :func:`~pyro_vae.cavi.mixture_roles.mixture_factor` then holds one block, expanded along K
    (stride 0), which :func:`~pyro_vae.cavi.expectations.product_sum` contracts once: at N = 30,000,
    K = 10, D = 5, a [N, K, 23] product became an [N, 23] @ [23, K] one."""
    if coefficients.numel() < _SHARED_FROM:
        return None
    blocks = coefficients.unflatten(-1, (k, -1))
    first = blocks.narrow(-2, 0, 1)
    spread = (blocks - first).abs().amax(-2)  # [*fbatch, P]: one pass each, not per block
    if not bool((spread <= _SHARED_RTOL * (1 + first.squeeze(-2).abs())).all()):
        return None
    return blocks.mean(-2, keepdim=True).expand(blocks.shape).flatten(-2)


def _component_rows(selector: torch.Tensor, k: int, size: int) -> list | None:
    """The fit points picking each of the ``k`` components (boolean [S] each), where the
    points hold the selector at one value across its plate and each component has at least
    ``size`` of them, as :func:`_fit_mixture`'s per-component solve needs; else None."""
    z = unexpanded_value(selector)
    if z[0].numel() != 1:
        return None
    z = z.reshape(len(z))
    rows = [z == j for j in range(k)]
    return None if any(int(r.sum()) < size for r in rows) else rows


def magnitudes_by_component(factor: Factor, runs: Runs) -> torch.Tensor | None:
    """[*batch, K] for a mixture factor solved one component at a time: per element, the
    largest |log f| at the fit points picking component k (summed as its coefficients are).
    Component k's coefficients are solved from those points alone, so their rounding scales
    with it, not with the −10¹² of a datum read at a far component. None otherwise."""
    if factor.selector is None:
        return None
    k = factor.coefficients.shape[factor.rank - 1]  # the batch's final K-axis
    size = math.prod(factor.coefficients.shape[factor.rank :])
    rows = _component_rows(runs.values[factor.selector], k, size)
    if rows is None:
        return None
    magnitude = runs.log_probs[factor.name].abs()
    picked = torch.stack([magnitude[r].amax(0) for r in rows], -1)
    return summed_to(picked, factor.coefficients.shape[: factor.rank])


def _lstsq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Least squares by QR (``gels``, ~5x faster than an SVD), or, where a design is rank
    deficient after all — a statistic constant at every value (log w of a Dirichlet over one
    category is 0), which counting rows cannot see — the minimum-norm solution by SVD
    (``gelsd``): its coefficient on such a statistic is 0, and the check runs still decide
    whether the factor is reproduced."""
    try:
        return torch.linalg.lstsq(a, b, driver="gels").solution
    except torch.linalg.LinAlgError:
        return torch.linalg.lstsq(a, b, driver="gelsd").solution


#: The share of a factor's whole magnitude that a misfit at the check points may reach by
#: float64 rounding, in units of :data:`_RTOL`: 100 ε of it (the solve's amplification,
#: κ of :func:`~pyro_vae.cavi.probe_frames.numerical_error`; see :func:`tolerance_scale`).
#: 10⁴ ε, κ times the verification's margin, still let 998 far coordinates of an event
#: hide a curved mean, 0.002 nats above log p(y).
_ROUNDING_SHARE = 1e2 * torch.finfo(torch.float64).eps / _RTOL
#: How many times the part of log f that moves the whole |log f| may be and still count in
#: full (see :func:`tolerance_scale`).
_WHOLE_SIZE_CAP = 100.0


def tolerance_scale(values: torch.Tensor) -> torch.Tensor:
    """Per element, what a factor's misfit at the check points is measured against, its
    log-densities ``values`` [S, *fbatch] at the fit points: the part of log f that moves
    between them (its largest distance from their mean, ``moving``), plus its whole size,
    at most :data:`_WHOLE_SIZE_CAP` times ``moving``, plus :data:`_ROUNDING_SHARE` of its
    whole size.

    The whole size stands for the rounding of terms the model cancels, which log f does
    not show (a Normal-Wishart block with data and prior mean near 10⁶ sums terms of μᵀΛμ
    to a log f of 15 nats in q's frame, 4 to 8 times the part that moves, and its valid
    factor misses its form by 6·10⁻⁷ nats: tester DN, 85 of 216 such fits refused where
    the part that moves stood alone). Beyond the cap it is a latent-free part (a constant
    in a ``pyro.factor``, an event's coordinates no latent reaches), which carries only its
    own rounding: counted in full, ``pyro.factor("f", -1e10 - 0.5 * mu**4)``, 10⁻⁷ of 10¹⁰
    nats allowed, was fitted as conjugate, the bound 1.0 nats above log p(y), and a
    ``.to_event(1)`` likelihood with 998 coordinates far from a latent-free mean 0.25 nats
    above it (tester DL)."""
    moving = (values - values.mean(0)).abs().amax(0)
    whole = values.abs().amax(0)
    return moving + torch.minimum(whole, _WHOLE_SIZE_CAP * moving) + _ROUNDING_SHARE * whole


def _element_misfits(designs, values, coefficients, scale) -> torch.Tensor:
    """Per element, max |T·C − log f| over the check points, relative to 1 + ``scale``
    (:func:`tolerance_scale`; inf where not finite): [*fbatch]."""
    predicted = (designs.movedim(0, -2) @ coefficients.unsqueeze(-1)).squeeze(-1)
    error = (predicted - values.movedim(0, -1)).abs().amax(-1) / (1 + scale)
    return torch.where(error.isfinite(), error, torch.inf)


def _misfit(designs, values, coefficients, scale) -> torch.Tensor:
    """max |T·C − log f| at the check points, relative to 1 + ``scale``."""
    return _element_misfits(designs, values, coefficients, scale).amax()


def _missed(designs, values, coefficients, scale) -> torch.Tensor:
    """The elements (flat indices into the factor's batch) where T·C misses log f at some
    check point by more than :data:`~pyro_vae.cavi.factor_support.CHECK_RTOL` of 1 + the
    factor's magnitude there."""
    error = _element_misfits(designs, values, coefficients, scale)
    return torch.nonzero(error.reshape(-1) > factor_support.CHECK_RTOL).squeeze(-1)


def solve_factor(members, runs: Runs, checks: Runs, site, rank, components=frozenset(),
           columns=None):  # fmt: skip
    """(C [*fbatch, P], whether C reproduces log f at the check runs, the largest relative
    contribution of a column left out of C, see :mod:`~pyro_vae.cavi.factor_support`);
    ``components``: a mixture's (see :func:`~pyro_vae.cavi.probe_designs.probe_design`);
    ``columns``: the only statistics log f may use (C is 0 on the others: a block's precision prior,
    whose coefficients solved on μ's statistics too came out 10⁻¹⁰, not 0, and at check points 10⁴
    sds out in the block's frame missed the Wishart prior by 1.3 nats, 9% of it: tester 32's F2). C
    is None, and the fit not good, where log f is not finite at some point (LAPACK's solvers take no
    NaN)."""
    values = runs.log_probs[site]
    if not bool(values.isfinite().all() & checks.log_probs[site].isfinite().all()):
        return None, False, 0.0
    scale = tolerance_scale(values)
    check_designs = probe_design(members, checks, rank, components)

    def good(coefficients) -> bool:
        return bool(_misfit(check_designs, checks.log_probs[site], coefficients, scale) <= _RTOL)

    def missed(coefficients) -> torch.Tensor:  # the elements a solve on a support misses
        return _missed(check_designs, checks.log_probs[site], coefficients, scale)

    if columns is not None and runs.grid is None:
        design = probe_design(members, runs, rank)
        coefficients = design.new_zeros(design.shape[1:-1] + design.shape[-1:])
        coefficients = coefficients.expand(values.shape[1:] + design.shape[-1:]).clone()
        coefficients[..., columns] = _fit(design[..., columns], values)
        return coefficients, good(coefficients), 0.0
    if runs.grid is not None:  # on a grid: one solve per member (kronecker_probe)
        statistics = [aligned_statistics([m], axis_runs(runs, j), rank)[0]
                      for j, m in enumerate(members)]  # fmt: skip
        coefficients = kronecker_fit(statistics, values, _lstsq)

        def solve_rows(rows, columns):  # the factor on ``columns`` at grid points ``rows``
            at = Runs({k: v[rows] for k, v in runs.values.items()}, {}, frames=runs.frames)
            phis = aligned_statistics(members, at, rank)
            return _fit(factor_support.design_columns(phis, columns), values[rows])

        pruned = on_support(statistics, values, coefficients, solve_rows, missed)
        if pruned is not None:
            return pruned[0], True, pruned[1]
        return coefficients, good(coefficients), 0.0
    if components:
        designs = probe_design(members, runs, rank, components)
        selector = runs.values[members[0].name]
        coefficients = _fit_mixture(designs, values, selector, members[0].family.k)
        misfit = _misfit(check_designs, checks.log_probs[site], coefficients, scale)
        shared = _shared_components(coefficients, members[0].family.k)
        if shared is not None:  # kept where it fits as the K blocks do, to rounding
            as_one = _misfit(check_designs, checks.log_probs[site], shared, scale)
            if bool(as_one <= 2 * misfit + CONSTANT_RTOL):
                coefficients, misfit = shared, as_one
        return coefficients, bool(misfit <= _RTOL), 0.0
    layout = group_layout(members, runs, rank, values)
    pruned = _fit_on_support(members, runs, rank, values, layout, missed, site)
    if pruned is not None:
        return pruned[0], True, pruned[1]
    if layout is not None:
        coefficients = apply_by_group(*layout, values, _lstsq)
    else:  # no index, or no layout by group smaller than the data
        coefficients = _fit(probe_design(members, runs, rank), values)
    return coefficients, good(coefficients), 0.0


def _fit_on_support(members, runs: Runs, rank: int, values, layout, missed, site: str):
    """(C [*fbatch, P] solved on the columns its log-density uses, 0 elsewhere, the largest relative
    contribution left out) for a large factor of several members
    (:mod:`pyro_vae.cavi.factor_support`: large in its solves, one per element or one per group,
    ``layout``, see :func:`~pyro_vae.cavi.probe_designs.group_layout`), reproducing log f at every
    element's check points (``missed(C)``: the elements it misses); None where it is small, uses
    over half its basis, or is still missed at some element after the columns used where it missed
    were added :data:`~pyro_vae.cavi.factor_support.WIDENINGS` times."""
    basis = math.prod(m.family.size for m in members)
    designs = values[0].numel() if layout is None else len(layout[0])  # one solve each
    if len(members) < 2 or not factor_support.eligible(designs, basis):
        return None
    if layout is None:
        _check_search_size(site, members, len(values), values[0].numel(), basis)
    phis = aligned_statistics(members, runs, rank) if layout is None else None

    def at(elements=None):  # (whole design [S, k, P], log f [S, k]) at some elements
        if layout is None:
            return factor_support.sampled(phis, values, elements)
        return _sampled_groups(*layout, values, elements)

    columns, dropped = factor_support.support(*at(), _fit)
    for _ in range(factor_support.WIDENINGS + 1):
        if columns is None:
            return None
        coefficients = _solve_on(columns, members, values, layout, phis, basis)
        misses = missed(coefficients)
        if not misses.numel():
            return coefficients, dropped
        # a column only unsampled elements use (a block of treated rows): add theirs
        count = factor_support.sample_size(len(values), basis)
        extra, more = factor_support.support(*at(factor_support.spread(misses, count)), _fit)
        if extra is None:
            return None
        grown = torch.unique(torch.cat([columns, extra]))
        if len(grown) == len(columns) or len(grown) > basis // 2:
            return None
        columns, dropped = grown, max(dropped, more)
    return None


#: Most entries (float64) of the design a support is searched in, points × sampled
#: elements × columns: 2 GiB. A spike-and-slab of five (inclusion, weight) pairs, 7,776
#: columns at 16,524 points, asked the allocator for 8 GB (tester 40's P1).
MAX_SEARCH_ENTRIES = 1 << 28


def _check_search_size(site: str, members, points: int, elements: int, basis: int) -> None:
    """NotConjugateError where the design :func:`_fit_on_support` would search a support in
    exceeds :data:`MAX_SEARCH_ENTRIES`, naming the factor, its latents and the size."""
    sampled = min(elements, factor_support.sample_size(points, basis))
    entries = points * sampled * basis
    if entries <= MAX_SEARCH_ENTRIES:
        return
    names = [m.name for m in members]
    raise NotConjugateError(
        f"factor {site!r}: its log-density has {basis:,} coefficients per element (the "
        f"statistics of {names} multiplied), and finding the ones it uses takes a "
        f"least-squares design of {points:,} points x {sampled} elements x {basis:,} "
        f"columns, {entries * 8 / 2**30:.1f} GiB, more than AutoCAVI allocates "
        f"({MAX_SEARCH_ENTRIES * 8 / 2**30:.0f} GiB): fit fewer of these latents in closed "
        "form, leaving some to SVI with pyro_vae.cavi.ConditionalCAVIGuide(model, "
        "svi_sites=[...])"
    )


def _solve_on(columns, members, values, layout, phis, basis: int) -> torch.Tensor:
    """C [*fbatch, P], solved on ``columns`` at every element (per element from ``phis``,
    or by group from ``layout``), 0 on the other columns. From twice the columns' rows and
    a few (the points were drawn for the whole basis): a design of 12 columns from 27 of 91
    points, as well conditioned (random continuous probes; a discrete member's are balanced
    over all of them, so all are kept)."""
    rows = len(values) if has_discrete(members) else 2 * len(columns) + EXTRA_RUNS
    if layout is None:
        design = factor_support.design_columns([phi[:rows] for phi in phis], columns)
        solved = _fit(design, values[:rows])  # [*fbatch, M]
    else:
        designs = layout[0][:, :rows].index_select(-1, columns)
        solved = apply_by_group(designs, layout[1], values[:rows], _lstsq)
    coefficients = solved.new_zeros(solved.shape[:-1] + (basis,))
    coefficients[..., columns] = solved
    return coefficients


def _sampled_groups(designs: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                    elements=None):  # fmt: skip
    """(designs [S, k, P], log-densities [S, k]) of some elements of a layout by group
    (designs [R, S, P], each element's row ``keys``): ``elements`` (flat indices into the
    factor's batch), or one element in each of
    :func:`~pyro_vae.cavi.factor_support.sample_size` groups, evenly spread over the groups
    holding one."""
    rows = keys.expand(values.shape[1:]).reshape(-1)
    if elements is None:
        order = rows.argsort(stable=True)
        held, counts = torch.unique_consecutive(rows[order], return_counts=True)
        first = order[counts.cumsum(0) - counts]  # an element of each group held
        count = factor_support.sample_size(designs.shape[1], designs.shape[2])
        elements = first[factor_support.sample_positions(held.shape, count)[:, 0]]
    sampled = values.reshape(len(values), -1)[:, elements]
    return designs[rows[elements]].movedim(0, 1), sampled


#: How far a factor's total log-density may move between model runs that change nothing it
#: reads (relative to 1 + Σ|log f|): the rounding of the model's own arithmetic on the same
#: values. A factor of no latent is held to this, not to the 1e-9 of a solved form: a
#: pyro.factor of -1e12 - 50·(float(μ) - 3)² moved 400 nats, within 1e-9 of its size,
#: and fitted q(μ) 12 posterior sds off (tester 17's F1).
CONSTANT_RTOL = 1e3 * torch.finfo(torch.float64).eps
