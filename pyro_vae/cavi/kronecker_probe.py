"""Large factors probed on a grid of their latents' points and solved one latent at a time.

A factor of m latents has P = Π_j B_j coefficients on the tensor-product basis ⊗_j T_j (see
:mod:`pyro_vae.cavi.conjugate_forms`), solved by least squares from about P random probe
points: a dense design of P² entries and P³ flops. ARD's weight prior, w ~ N(0, diag(α)⁻¹)
over D coordinates, has (1 + D + D(D + 1)/2)(1 + 2D) of them: 9,471 at D = 20, one solve of
18 to 62 s, and 2·10⁵ at D = 60, past any dense solve.

On a grid the design factors. Draw n_j points of each member x_j alone and run the model at
every combination (point (i₁, …, i_m), the other latents held at one draw): the design at
the grid is ⊗_j T_j with T_j = T_j(x_j⁽ⁱ⁾) [n_j, B_j], whose least-squares solution is
(⊗_j T_j⁺) L (Van Loan 2000, "The ubiquitous Kronecker product", §3: the pseudo-inverse of a
Kronecker product is the Kronecker product of the pseudo-inverses). It is computed as one
solve per member along its axis of the log-densities L [n₁, …, n_m]: Σ_j n_j B_j² flops
with the other axes as right-hand sides, milliseconds where the dense solve took minutes.
The grid has Π n_j ≈ P points, as many model evaluations as the random points it replaces,
in batched model runs (as the shared probe runs are, :mod:`pyro_vae.cavi.probe_runs`).

A factor is probed so (:func:`eligible`) where it has two or more members, each continuous
and read at the factor's own elements (global, or in the factor's plates; no data index, no
mixture), and at least :data:`MIN_BASIS` coefficients. A plated member's points are drawn
apart at each element, so along its axis each element has its own T_j and its own small
solve (Bayesian PCA's z_n beside the global W and τ). Each member takes
``B_j + max(1, B_j // 8)`` points: the P/8 rows :data:`~pyro_vae.cavi.probe_counts.EXTRA_RUNS`
add to a random design for its condition, per axis (the condition of ⊗_j T_j is the
product of the T_j's). Only the factor's own log-densities are kept from the grid's runs.
The factor is checked at the shared check points, where every latent varies, as every
factor is: a log-density that also reads a latent provenance did not see fails there.
"""

from __future__ import annotations

import math

import torch

from pyro_vae.cavi import factor_support
from pyro_vae.cavi.exponential_families import DISCRETE_FAMILIES
from pyro_vae.cavi.probe_runs import Runs

#: Coefficients from which a factor is probed on a grid: from here the
#: dense solve (S·P² flops, S ≈ 9P/8) outgrows the grid's one model run.
MIN_BASIS = 1_000
#: Most grid points (model evaluations) for one factor: ARD over D = 60 coordinates takes
#: 289,272 (its weight prior has 228,811 coefficients).
MAX_POINTS = 300_000


#: Most entries of the design a support is solved again on (rows × columns × elements,
#: 2²⁵ float64, 256 MiB); beyond, the whole-basis solution is kept.
SUPPORT_BUDGET = 1 << 25


def eligible(members, components=frozenset()) -> bool:
    """Whether a factor of ``members`` (:class:`~pyro_vae.cavi.latent_units.Latent`)
    is probed on a grid: two or more members, each continuous and read at the factor's own
    elements (global, or in the factor's plates; no data index), not a mixture's, and at
    least :data:`MIN_BASIS` coefficients."""
    if components or len(members) < 2:
        return False
    if any(m.family.name in DISCRETE_FAMILIES or m.index is not None for m in members):
        return False
    return math.prod(m.family.size for m in members) >= MIN_BASIS


def axis_count(size: int) -> int:
    """Points along the axis of a member of ``size`` statistics: those and size/8 more (at
    least one)."""
    return size + max(1, size // 8)


def axis_counts(members) -> list[int]:
    """Points along each member's axis (:func:`axis_count`)."""
    return [axis_count(m.family.size) for m in members]


def grid_runs(runner, members, site: str) -> Runs:
    """Factor ``site``'s log-densities on the grid of its ``members``' points
    (:func:`axis_counts` each, drawn by ``runner`` as its shared points are, in its frames),
    every other latent held at one draw: ``Runs`` of Π n_j points in row-major order over
    the members (the first slowest), with ``grid`` set to ((name, n_j), …). Only this
    factor's log-densities are kept, run by run (the likelihood's [points, N] at D = 40,
    N = 10⁴ was 7 GB, tester 28's F1)."""
    counts = axis_counts(members)
    values = {k: v[0] for k, v in runner.draw(1).items()}  # the others' one point
    total = math.prod(counts)
    axes = {}
    for axis, (member, n) in enumerate(zip(members, counts, strict=True)):
        drawn = runner.draw(n)
        view = [1] * len(counts)
        view[axis] = n
        for name in member.sites:
            v = drawn[name]
            event = v.shape[1:]
            axes[name] = v.reshape(tuple(view) + event).expand(tuple(counts) + event)
    points = {name: v.expand((total,) + v.shape) for name, v in values.items()}
    points.update({name: v.reshape((total,) + v.shape[len(counts) :]) for name, v in axes.items()})
    grid = tuple((m.name, n) for m, n in zip(members, counts, strict=True))
    log_probs = runner.log_probs(points, total, sites=(site,))
    return Runs(points, log_probs, frames=runner.frames, grid=grid)


def axis_runs(runs: Runs, axis: int) -> Runs:
    """The points of a grid's ``axis`` (the others at their first), for the member's
    statistics there: ``Runs`` of n_j points, no log-densities."""
    counts = [n for _, n in runs.grid]
    stride = math.prod(counts[axis + 1 :])
    n = counts[axis]
    values = {site: v[: n * stride : stride] for site, v in runs.values.items()}
    return Runs(values, {}, frames=runs.frames)


def kronecker_fit(statistics: list[torch.Tensor], values: torch.Tensor, lstsq) -> torch.Tensor:
    """The least-squares C of log f ≈ (⊗_j T_j) C on a grid, at each element of the factor:
    ``statistics`` T_j [n_j, *view_j, B_j] in the members' order (view_j of the factor's
    rank: size 1 along a dim where member j is global, the factor's size where it is in
    that plate), ``values`` log f [Π n_j, *fbatch] (row-major over the grid); [*fbatch, Π
    B_j], on :func:`~pyro_vae.cavi.factor_support.tensor_product`'s basis (the last
    member's statistic fastest). Along a global member's axis one solve takes every element
    as more right-hand sides; along a plated one, one solve per element (batched).
    ``lstsq(A, B)``: the solver, A [..., n, B] and B [..., n, r]."""
    m, fbatch = len(statistics), values.shape[1:]
    c = values.reshape(tuple(t.shape[0] for t in statistics) + fbatch)  # [n₁…n_m, *fbatch]
    for axis, t in enumerate(statistics):
        c = _solve_axis(c, axis, t.reshape(_padded_shape(t, fbatch)), m, lstsq)
    return c.flatten(0, m - 1).movedim(0, -1)


def _padded_shape(t: torch.Tensor, fbatch) -> tuple[int, ...]:
    """T_j's shape [n, *view, B] with its view of the factor's batch left-padded with 1s
    to the batch's rank."""
    view = tuple(t.shape[1:-1])
    return t.shape[:1] + (1,) * (len(fbatch) - len(view)) + view + t.shape[-1:]


def _solve_axis(c: torch.Tensor, axis: int, t: torch.Tensor, m: int, lstsq) -> torch.Tensor:
    """``c`` [*grid or basis axes (m), *fbatch] with ``axis`` solved against T [n, *view,
    B]: that axis's n points become B coefficients. The factor dims along which T varies
    (the member's plates) are batch dims of the solve, the others right-hand sides."""
    view = t.shape[1:-1]
    batched = [m + r for r, size in enumerate(view) if size > 1]
    rest = [d for d in range(c.dim()) if d != axis and d not in batched]
    order = batched + [axis] + rest
    moved = c.permute(order)
    lead = moved.shape[: len(batched)]
    a = t.reshape((t.shape[0],) + tuple(lead) + t.shape[-1:]).movedim(0, -2)  # [*lead, n, B]
    solved = lstsq(a, moved.reshape(tuple(lead) + (t.shape[0], -1)))  # [*lead, B, rest]
    solved = solved.reshape(tuple(lead) + (t.shape[-1],) + moved.shape[len(batched) + 1 :])
    return solved.permute([order.index(d) for d in range(c.dim())])


def on_support(statistics, values, coefficients, solve_rows, missed):
    """(C [*fbatch, P] on the columns the factor uses, 0 elsewhere; the largest relative
    contribution of a column left out) from the grid's whole-basis solution ``coefficients``,
    for a factor large enough that the sweeps contract its support alone
    (:func:`~pyro_vae.cavi.factor_support.eligible`,
    :func:`~pyro_vae.cavi.factor_support.sparse_form`); None where it is smaller, uses
    over half its basis at some cutoff tried, or no cutoff's columns reproduce log f at
    every element's check points (``missed(C)``: the elements missed).

    A column's contribution is |c| times the largest its statistic takes on the grid (the
    product of each member's largest), relative to 1 + max |log f| at its element; the
    columns above a cutoff (:data:`~pyro_vae.cavi.factor_support.CUTOFFS`, the largest
    first) are solved again, their design no longer a Kronecker product, at
    2M + 3 grid points drawn at random (``solve_rows(rows, columns)``: the solution there,
    [*fbatch, M]), as :mod:`~pyro_vae.cavi.factor_support` solves a support. Bayesian PCA's
    likelihood uses about 90 of its 14,625 coefficients per datum."""
    basis = coefficients.shape[-1]
    if not factor_support.eligible(coefficients[..., 0].numel(), basis):
        return None
    reach = torch.ones(statistics[0].shape[1:-1] + (1,), dtype=coefficients.dtype)
    for t in statistics:
        reach = (reach.unsqueeze(-1) * t.abs().amax(0).unsqueeze(-2)).flatten(-2)
    scale = 1 + values.abs().amax(0)
    contribution = coefficients.abs() * reach / scale.unsqueeze(-1)
    contribution = contribution.reshape(-1, basis).amax(0)
    generator = torch.Generator().manual_seed(0)
    for cutoff in factor_support.CUTOFFS:
        used = contribution > cutoff
        if int(used.sum()) > basis // 2:
            return None
        columns = torch.nonzero(used).squeeze(-1)
        count = min(len(values), 2 * len(columns) + 3)
        if count * len(columns) * coefficients[..., 0].numel() > SUPPORT_BUDGET:
            return None  # the re-solve's design would outgrow the whole basis' solve
        rows = torch.randperm(len(values), generator=generator)[:count]
        pruned = coefficients.new_zeros(coefficients.shape)
        pruned[..., columns] = solve_rows(rows, columns)
        if not missed(pruned).numel():
            dropped = contribution[~used]
            return pruned, float(dropped.max()) if dropped.numel() else 0.0
    return None
