"""Large factors solved and contracted on their support: the coefficients they use.

A factor of m latents has Π_j B_j coefficients per element on the tensor-product basis
⊗_j T_j (see :mod:`pyro_vae.cavi.conjugate_forms`), but a model's log-density uses few of
them: log N(y | μ + a + b, τ⁻¹), the likelihood of crossed random effects, is ½ log τ plus
τ times a quadratic in (μ, a, b), 12 of the 3⁴ = 81. The other 69 solve to rounding, at
most 1e-11 of the factor's size in the crossed effects of
``benchmarks/autocavi_crossed_effects.py``, against 2e-3 for the smallest one it uses.
Solved and contracted whole, a per-datum factor of 20,000 elements cost most of that fit:
a least-squares design of [S ≈ 90, 20,000, 81] (1.2 GB) and 5 to 12 ms for each message
read from it, 30 to 60 times the sweep written out by hand.

For a factor of at least :data:`MIN_SIZE` coefficients in all:

1. :func:`support`: it is solved on the whole basis at :data:`SAMPLE` of its elements, and
   a column is kept where, at some sampled element, its contribution |c|·max|T| at the fit
   points exceeds a cutoff (:data:`CUTOFFS`) of 1 + max|log f| there. The others are left
   out only if the solve without them reproduces log f at those points as closely as the
   whole basis does, to rounding: a column a log-density uses, however small (a cubic
   term of 1e-11, a vague prior's 1e-12 τθ²), leaves a residual the size of its
   contribution, where one it does not use only held rounding.
2. It is solved again at every element on those columns alone (:func:`design_columns`),
   its other coefficients exactly 0, and checked at the check points as every factor is;
   a column some unsampled element uses fails that check, and the whole basis is solved
   instead.
3. The sweeps contract only the nonzero columns (:func:`sparse_form`,
   :func:`contract_on_support`): C [*batch, M] times each latent's E_q[T] gathered at its
   statistic in each column.

A factor using more than half its basis, or smaller than :data:`MIN_SIZE`, is solved and
contracted whole, as before.
"""

from __future__ import annotations

import math
import weakref

import torch

#: Coefficients in all (elements × basis) from which a factor is solved on its support.
MIN_SIZE = 1 << 16
#: Elements at which the whole basis is solved to find the support, ...
SAMPLE = 64
#: ... fewer where each solve is large (S points × P² for P columns) beyond this budget, but
#: never fewer than 8: a factor reading a 4-vector and two intercepts has P = 1,215 and
#: S = 1,366, and 64 of its solves took 7 s; an element missed is caught by the check and
#: its columns added.
SEARCH_FLOPS = 1 << 30
MIN_SAMPLE = 8


def sample_size(points: int, basis: int) -> int:
    """Elements to find a support at: :data:`SAMPLE`, fewer for large solves (see
    :data:`SEARCH_FLOPS`)."""
    return max(MIN_SAMPLE, min(SAMPLE, SEARCH_FLOPS // max(1, points * basis * basis)))


#: Cutoffs tried in turn: a column whose contribution at the fit points, relative to
#: 1 + max |log f|, is below the cutoff at every sampled element is left out, if the fit
#: without it passes the residual test. Rounding leaves unused columns at 1e-15 to 1e-11
#: of log f near zero, and at 1e-9 where q's frame is narrow on data near 10⁴; the largest
#: cutoff that passes is taken (data at 10⁴ probed at N(0, 1): 1e-10).
CUTOFFS = (1e-6, 1e-8, 1e-10)
#: The fit without the columns left out may leave residuals up to this many times the
#: whole basis' (see :func:`_rounding`), ...
ROUNDING_GROWTH = 10.0
#: ... plus this, relative to 1 + max |log f| (float64's ε times 100: a design's condition).
_ROUNDING = 100 * torch.finfo(torch.float64).eps
#: A factor solved on its support must reproduce log f at every element's check points to
#: this, relative to 1 + its magnitude there (verification's tolerance where q lies: the
#: check of a whole-basis solve, 1e-7, would pass a column of 1e-8 only unsampled elements
#: use, which the check at q then refuses in every round)
CHECK_RTOL = 1e-9
#: Times the columns used at the elements a support misses are added before the whole basis
#: is solved instead (a block of treated rows between two sampled ones adds its column).
WIDENINGS = 2
#: The columns are left out only where the fit without them reproduces log f at the
#: sampled fit points as well as the whole basis does, up to this factor, and ...
_ROUNDING_GROWTH = 10.0
#: ... this, relative to 1 + max |log f| (float64's ε times 100: a design's condition).
_ROUNDING = 100 * torch.finfo(torch.float64).eps

#: id(coefficients) -> its sparse form or None, dropped when the tensor is freed (a dict of
#: weak keys would compare two tensors with ==, elementwise)
_FORMS: dict = {}


def eligible(designs: int, basis: int) -> bool:
    """Whether a factor of ``designs`` designs (its elements, or its groups where the
    elements reading one group share a design) of ``basis`` columns is large enough: a
    mixed model's 100 groups of 90 columns are solved whole faster than a support is found
    for them."""
    return designs * basis >= MIN_SIZE and basis >= 4


def sample_positions(shape: torch.Size, count: int = SAMPLE) -> torch.Tensor:
    """Up to ``count`` elements of a batch ``shape``, evenly spread (first and last
    included): LongTensor [k, len(shape)] of multi-indices."""
    n = math.prod(shape)
    flat = torch.linspace(0, n - 1, min(n, count), dtype=torch.float64).round().long().unique()
    return torch.stack(torch.unravel_index(flat, tuple(shape)), -1)


def _at(phi: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``phi`` [S, *view, B] (view broadcastable to the batch) at ``positions`` [k, rank]:
    [S, k, B]."""
    index = tuple(
        positions[:, d] if phi.shape[1 + d] > 1 else torch.zeros_like(positions[:, d])
        for d in range(positions.shape[1])
    )
    return phi[(slice(None),) + index]


def spread(elements: torch.Tensor, count: int = SAMPLE) -> torch.Tensor:
    """Up to ``count`` of ``elements`` (a LongTensor [n]), evenly spread over it."""
    return elements[sample_positions(elements.shape, count)[:, 0]]


def sampled(phis: list, values: torch.Tensor, elements=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the whole design [S, k, P], the log-densities [S, k]) at :func:`sample_size` of a
    factor's elements (:func:`sample_positions`), or at ``elements`` (flat indices into
    its batch).

    Args:
        phis: each member's statistics at the fit points, [S, *view_j, B_j], view_j of the
            factor's rank and broadcastable to its batch.
        values: the log-densities there, [S, *batch].
    """
    if elements is None:
        basis = math.prod(phi.shape[-1] for phi in phis)
        positions = sample_positions(values.shape[1:], sample_size(len(values), basis))
    else:
        positions = torch.stack(torch.unravel_index(elements, tuple(values.shape[1:])), -1)
    design = torch.ones((values.shape[0], len(positions), 1), dtype=torch.float64)
    design = tensor_product(design, [_at(phi, positions) for phi in phis])
    return design, _at(values.unsqueeze(-1), positions).squeeze(-1)


def tensor_product(design: torch.Tensor, phis) -> torch.Tensor:
    """``design`` [S, *batch, P₀] times each of ``phis`` [S, *view, B_j] in turn, as the
    tensor-product basis: [S, *batch, P₀·Π B_j], the last member's statistic fastest."""
    for phi in phis:
        design = (design.unsqueeze(-1) * phi.unsqueeze(-2)).flatten(-2)
    return design


def support(design: torch.Tensor, values: torch.Tensor, fit) -> tuple[torch.Tensor | None, float]:
    """(the columns the factor uses, LongTensor [M] in the basis' order, or None where it
    uses more than half; the largest relative contribution of a column left out), from its
    whole design [S, k, P] and log-densities [S, k] at k sampled elements (:func:`sampled`).
    ``fit``: the least-squares solve, ``fit(design, values)`` → [k, P].

    The columns whose contribution exceeds a cutoff (:data:`CUTOFFS`, the largest first)
    are kept if the fit on them alone leaves residuals no larger than rounding's, estimated
    from the whole basis' fit (:func:`_rounding`); else the next cutoff is tried."""
    c = fit(design, values)  # [k, P]
    scale = 1 + values.abs().amax(0)
    contribution = (c.abs() * design.abs().amax(0) / scale.unsqueeze(-1)).amax(0)  # [P]
    rounding = _rounding(design, c, values, scale)
    for cutoff in CUTOFFS:
        used = contribution > cutoff
        if int(used.sum()) > design.shape[-1] // 2:
            return None, 0.0
        columns = torch.nonzero(used).squeeze(-1)
        kept = design.index_select(-1, columns)
        if float(_residual(kept, fit(kept, values), values, scale).max()) <= rounding:
            dropped = contribution[~used]
            return columns, float(dropped.max()) if dropped.numel() else 0.0
    return None, 0.0


def _rounding(design, c, values, scale) -> float:
    """The largest residual a fit may leave that rounding explains: :data:`ROUNDING_GROWTH`
    times the whole basis' largest, scaled up by √(S / (S − P)) (a fit of P columns to S
    points absorbs that share of the noise), plus :data:`_ROUNDING`."""
    count, size = design.shape[0], design.shape[-1]
    whole = float(_residual(design, c, values, scale).max())
    return ROUNDING_GROWTH * whole * math.sqrt(count / max(count - size, 1)) + _ROUNDING


def _residual(design, c, values, scale) -> torch.Tensor:
    """max over the points of |design·c − log f| per element, relative to ``scale``: [k]."""
    predicted = (design * c.unsqueeze(0)).sum(-1)
    return (predicted - values).abs().amax(0) / scale


def column_digits(columns: torch.Tensor, sizes) -> torch.Tensor:
    """Each column's statistic of each member, LongTensor [M, m] (the basis is ⊗_j T_j in
    row-major order: column = ((d₁·B₂ + d₂)·B₃ + d₃)…)."""
    return torch.stack(torch.unravel_index(columns, tuple(sizes)), -1)


def design_columns(phis: list, columns: torch.Tensor) -> torch.Tensor:
    """The design's ``columns`` alone, [S, *batch, M]: Π_j phi_j at column's statistic of j
    (the whole design's ``[..., columns]``, without making it)."""
    sizes = [phi.shape[-1] for phi in phis]
    return _smallest_first(
        [phi @ pick for phi, pick in zip(phis, picks(columns, sizes), strict=True)]
    )


def _smallest_first(terms: list) -> torch.Tensor:
    """The broadcast product of ``terms``, the smallest multiplied together first (a global
    latent's [1, M] before a per-datum one's [N, M])."""
    terms = sorted(terms, key=torch.numel)
    product = terms[0]
    for term in terms[1:]:
        product = product * term
    return product


def picks(columns: torch.Tensor, sizes) -> list[torch.Tensor]:
    """For each member j, the 0/1 matrix [B_j, M] picking its statistic in each column: a
    product with it gathers (6x faster than indexing the last dim of [20,000, 3] at 12
    columns)."""
    digits = column_digits(columns, sizes)
    return [
        torch.nn.functional.one_hot(digits[:, j], b).to(torch.float64).T
        for j, b in enumerate(sizes)
    ]


def sparse_form(coefficients: torch.Tensor, rank: int):
    """(C at its nonzero columns [*batch, M], for each member j the 0/1 matrix [B_j, M]
    picking its statistic in each column) for a factor's
    coefficients [*batch, B₁, …, B_m] with at most half its columns nonzero at every
    element and at least :data:`MIN_SIZE` of them, else None; found once per tensor."""
    key = id(coefficients)
    if key in _FORMS:
        return _FORMS[key]
    form = None
    sizes = coefficients.shape[rank:]
    basis = math.prod(sizes)
    if len(sizes) > 1 and eligible(coefficients.numel() // max(basis, 1), basis):
        flat = coefficients.reshape(coefficients.shape[:rank] + (basis,))
        used = (flat != 0).reshape(-1, basis).any(0)
        if int(used.sum()) <= basis // 2:
            columns = torch.nonzero(used).squeeze(-1)
            form = (flat[..., columns].contiguous(), picks(columns, sizes))
    _FORMS[key] = form
    weakref.finalize(coefficients, _FORMS.pop, key, None)
    return form


def contract_on_support(form, views: list, keep: int | None) -> torch.Tensor:
    """Σ over the nonzero columns of C times each member's E_q[T] at its statistic there.

    Args:
        form: :func:`sparse_form`'s (C [*batch, M], picks [B_j, M] per member).
        views: each member's E_q[T], [*view_j, B_j] with view_j broadcastable to the batch
            (the kept member's is not read).
        keep: the member whose axis is left: returns [*batch, B_keep], its message; None:
            E_q[log f] per element, [*batch].

    The statistics are gathered by a product with the 0/1 picks, and the smallest
    multiplied together first (a global latent's [1, M] before a per-datum one's [N, M])."""
    picks = form[1]
    return contract_gathered(form, [et @ picks[j] for j, et in enumerate(views) if j != keep], keep)


def contract_gathered(form, terms: list, keep: int | None) -> torch.Tensor:
    """:func:`contract_on_support` from each member's statistic at every nonzero column,
    ``terms`` [*view_j, M] (the members but ``keep``, in order): a member read through a
    data index is gathered as this [G, M] table, after the product with its picks, rather
    than as its [G, B_j] statistics before it (one [N, M] gather instead of an [N, B_j]
    gather and an [N, B_j] x [B_j, M] product)."""
    values, picks = form
    product = values if not terms else _smallest_first(terms) * values  # C last: largest
    if keep is None:
        return product.sum(-1)
    return product @ picks[keep].T
