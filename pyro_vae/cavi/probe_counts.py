"""How many probe points the factors' solves take: as many as a design's unknowns and a few
more (:data:`EXTRA_RUNS`), drawn again until every design with a discrete member has full
column rank at every element, decided by counting rows per combination of categories
(:func:`enough_runs`), and the fit and check points every factor shares (:func:`shared_runs`).
"""

from __future__ import annotations

import math

import torch

from pyro_vae.cavi.exponential_families import (
    DISCRETE_FAMILIES,
    NotConjugateError,
)
from pyro_vae.cavi.mixture_components import (
    k_dim,
    picked,
)
from pyro_vae.cavi.probe_designs import as_read, unexpanded
from pyro_vae.cavi.probe_enumeration import enumerable
from pyro_vae.cavi.probe_runs import (
    Runs,
)

#: least-squares runs beyond the P unknowns, for a well-posed solve: at least this many,
#: and P/8 for a large design. A random design of P + 3 rows is nearly square, and its
#: condition number grows with P (Edelman 1988: about P for a square Gaussian matrix), which
#: the solve multiplies rounding by: a factor of six latents (P = 729) missed its form at q
#: by 8e-7 of its size and was refused (tester 12). With P/8 more rows the condition number
#: of a design of iid entries stays near (1 + √(8/9)) / (1 − √(8/9)) ≈ 35 whatever P
#: (Marchenko-Pastur); the tensor products of probed statistics behaved alike.
EXTRA_RUNS = 3
_CHECK_RUNS = 4  # fresh points at which each fitted factor is verified
_MAX_ROUNDS = 20  # batches of extra runs allowed before a design is declared degenerate


def _full_rank(members, values, rank, components=frozenset()) -> bool:
    """Whether the design of ``members`` at ``values`` has full column rank at every element;
    ``components``: a mixture's (see :func:`~pyro_vae.cavi.probe_designs.probe_design`), whose
    discrete members are counted at the component the selector (``members[0]``) picks.

    A discrete member's statistics span the indicators of its value (Categorical: one-hot;
    Bernoulli: [1, x], an invertible mix of [1 − x, x]), so up to an invertible change of
    columns the design is block-diagonal over the combinations of the discrete members'
    values, each block the design of the continuous members at the rows with that
    combination. Random continuous probes make a block full rank (with probability one) once
    it has as many rows as columns, so counting rows per combination decides the rank
    exactly, without the SVD of every element's design (5 ms of a mixture's probing)."""
    combination, combinations = torch.zeros((), dtype=torch.long), 1
    columns = 1
    for member in members:
        if member.family.name not in DISCRETE_FAMILIES:
            columns *= member.family.size
            continue
        k = getattr(member.family, "k", 2)
        value = as_read(member, values[member.sites[0]].long())  # [S, *batch]
        if member.name in components:  # [S, K] → the picked component's, [S, *z's batch]
            selector = as_read(members[0], values[members[0].sites[0]].long())
            categories, dim = members[0].family.k, k_dim(components, member.name)
            value = picked(value.unsqueeze(-1), selector, categories, dim, rank).squeeze(-1)
        value = value.reshape(value.shape[:1] + (1,) * (rank + 1 - value.dim()) + value.shape[1:])
        combination, combinations = combination * k + value, combinations * k
    counts = torch.nn.functional.one_hot(combination, combinations).sum(0)
    return bool(counts.min() >= columns)


def enough_runs(make_runs, needs, first: int) -> tuple[Runs, Runs]:
    """Fit runs until every design ``(members, rank, components)`` in ``needs`` has full column
    rank at every element — random Categorical probes can miss a combination of categories
    at some element, and a least-squares fit would then guess — and fresh check runs.
    ``make_runs(count, key)``: ``count`` probe points (``first`` of them at first; each a
    combination's worth of rows where the runner enumerates discrete latents); ``key``
    ("fit", "check") names a draw :meth:`ProbeRunner.prefetch` may have made ahead, in the
    same model run. The fit and check points are drawn apart, so each is balanced in its
    Categorical probes."""
    runs = make_runs(first, "fit")
    checks = make_runs(_CHECK_RUNS, "check")
    # only a design with a discrete member can fall short of full rank (see first_count)
    discrete = [need for need in needs if has_discrete(need[0])]
    for _ in range(_MAX_ROUNDS):
        values = unexpanded(runs.values)
        if all(_full_rank(m, values, rank, comps) for m, rank, comps in discrete):
            return runs, checks
        runs = runs + make_runs(_size(needs), None)
    names = sorted({m.name for members, _, _ in needs for m in members})
    raise NotConjugateError(
        f"probing: {len(runs)} random runs still leave the coefficients of a factor of "
        f"{names} undetermined (its log-density takes too few distinct values)"
    )


def has_discrete(members) -> bool:
    return any(m.family.name in DISCRETE_FAMILIES for m in members)


def _size(needs, enumerated=()) -> int:
    """The most unknowns of a design in ``needs``, counting only the members not
    ``enumerated`` (each enumerated combination gets every point: its own block of rows)."""
    return max(
        math.prod(m.family.size for m in members if m.name not in enumerated)
        for members, _, _ in needs
    )


def first_count(needs, batched: bool, enumerated=()) -> int:
    """Fit runs drawn at first: the unknowns and a few more. Continuous probes give a full
    rank design with probability one once there are as many runs as unknowns, and so does
    one Categorical member in a plate, whose probes are balanced (each element takes each of
    its K categories in ⌊S/K⌋ of S runs, enough for the K blocks of its design), or
    ``enumerated`` (every combination at every point). Other discrete probes (Bernoulli, a
    Categorical outside any plate, two discrete members) are independent draws that can
    leave a design short of full rank at some element: batched, twice the unknowns then
    (cheap there)."""
    twice = batched and any(
        not _balanced([m for m in members if m.name not in enumerated]) for members, _, _ in needs
    )
    size = _size(needs, enumerated)
    return (2 if twice else 1) * size + max(EXTRA_RUNS, size // 8)  # see EXTRA_RUNS


def _balanced(members) -> bool:
    discrete = [m for m in members if m.family.name in DISCRETE_FAMILIES]
    return not discrete or (
        len(discrete) == 1 and discrete[0].family.name == "Categorical"
        and len(discrete[0].batch_shape) > 0
    )  # fmt: skip


def shared_runs(runner, needs) -> tuple[Runs, Runs]:
    """(fit runs, check runs) shared by the factors ``needs`` (their designs), drawn
    together in one batched model run when the model broadcasts; with the discrete latents
    in plates enumerated, where there are any, in a second (see
    :mod:`pyro_vae.cavi.probe_enumeration`). Without ``needs`` (every factor on a grid,
    :mod:`pyro_vae.cavi.kronecker_probe`) the check runs alone and a few fit runs."""
    if not needs:
        runner.prefetch([(1 + EXTRA_RUNS, None, "fit"), (_CHECK_RUNS, None, "check")])
        return runner.runs(1 + EXTRA_RUNS, None, "fit"), runner.runs(_CHECK_RUNS, None, "check")
    enumerated = enumerable(runner.latents)
    first = first_count(needs, True, enumerated)
    if not (enumerated and runner.prefetch_enumerated(first, enumerated, _CHECK_RUNS)):
        first = first_count(needs, True)  # drawn: every assignment's points counted
        runner.prefetch([(first, None, "fit"), (_CHECK_RUNS, None, "check")])
        first = first_count(needs, False) if runner.batched is False else first
    return enough_runs(lambda count, key: runner.runs(count, None, key), needs, first)
