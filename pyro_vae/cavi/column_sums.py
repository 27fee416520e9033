"""A factor on its support contracted with its columns summed over the data first, for
``AutoCAVI``'s sweeps.

A per-datum factor solved on its support (:mod:`pyro_vae.cavi.factor_support`) has
coefficients C [N, M]: for crossed random effects y ~ N(μ + a[s] + b[i], 1/τ), M = 12
columns, each a product of its members' statistics (τ·y², τ·a_s², τ·a_s·b_i, …). A sweep
contracted all 12 at every datum for each message and for the bound: 12 to 19 ms a sweep
at N = 20,000 where CAVI written out takes about 1 ms, since it sums the data by group once.

Most columns do not need the data one at a time. A column that reads no latent through a
data index (τ·y², τ·μ) is the same sum over the data at every sweep; one that reads one
indexed latent a (τ·y·a_s) needs only the data summed by a's groups; only a column reading
two (τ·a_s·b_i) needs each datum. So the coefficients are summed once, per factor and per
output:

- the bound, and a message to a latent read whole by every datum (μ, τ): the columns of no
  indexed latent summed over the data, those of one indexed latent j summed by j's groups
  (then contracted with j's statistics there), the rest per datum;
- a message to an indexed latent a: the columns reading no other indexed latent summed by
  a's groups (the message then comes out per group, with no scatter), the rest per datum.

Crossed effects keep 1 of 12 columns per datum for the bound and 4 for a's message. The
sums are exact (the same products, summed in another order: tested against the per-datum
contraction). Elements summed by group first (the pairs of crossed effects with several
responses each) take column sums the same way. A factor with a latent that varies along
its elements unread through an index (a per-datum latent), or a family without the
constant statistic (a Categorical), is left to
:func:`~pyro_vae.cavi.expectations.contract`. The sums skip an indexed latent a column does
not read, whose statistic there is the constant, E_q[1] = 1.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from pyro_vae.cavi.data_indexing import scatter_by_index
from pyro_vae.cavi.expectations import support_terms
from pyro_vae.cavi.factor_form import Factor
from pyro_vae.cavi.factor_support import contract_gathered, sparse_form


@dataclass
class _Block:
    """Columns summed over the data (``member`` None: [M_b]) or by the groups of the
    indexed ``member`` ([G, M_b]), with each member's statistic in each column."""

    member: int | None
    table: torch.Tensor
    digits: torch.Tensor  # [M_b, m]


@dataclass
class _Partition:
    """The columns for one output: summed blocks, and the rest per datum (their values
    [*batch, M_r] and each member's 0/1 picks [B_j, M_r]; None where there are none)."""

    blocks: list
    rest: tuple | None


_PARTITIONS: dict = {}  # id(coefficients) -> {output: _Partition}


def summed_message(factor: Factor, stats: dict, name: str, shape, constants: dict, pairs=None):
    """The message of ``factor`` to latent ``name``, summed to its ``shape`` [*batch, B] (as
    ``contract`` then ``scatter_by_index``/``sum_to`` give it), from column sums; None
    where the factor does not take them (see the module docstring). ``constants``: {latent:
    whether its family's first statistic is the constant 1}; ``pairs``: chain links, as
    for ``contract`` (a factor two of whose latents one joins takes none)."""
    kinds = _kinds(factor, stats, constants, pairs)
    if kinds is None:
        return None
    keep = factor.latents.index(name)
    out = keep if kinds[keep] == "indexed" else None
    partition = _partition(factor, kinds, out, stats)
    size = stats[name].shape[-1]
    message = stats[name].new_zeros(shape)
    if partition.blocks:
        message = message + _blocks(partition.blocks, factor, kinds, stats, keep, size).reshape(
            shape
        )
    if partition.rest is not None:
        rest = _rest(partition.rest, factor, stats, keep)
        if out is not None:
            rest = scatter_by_index(rest, factor.index[name], shape)
        else:
            rest = rest.reshape(-1, size).sum(0)
        message = message + rest.reshape(shape)
    return message


def summed_total(factor: Factor, stats: dict, constants: dict, pairs=None):
    """Σ over the elements of E_q[log f] (nats), a 0-dim tensor (differentiable in
    ``stats``), from column sums; None where the factor does not take them (arguments as
    :func:`summed_message`'s)."""
    kinds = _kinds(factor, stats, constants, pairs)
    if kinds is None:
        return None
    partition = _partition(factor, kinds, None, stats)
    total = torch.zeros((), dtype=torch.float64)
    if partition.blocks:
        total = total + _blocks(partition.blocks, factor, kinds, stats, None, 1).sum()
    if partition.rest is not None:
        total = total + _rest(partition.rest, factor, stats, None).sum()
    return total


def _kinds(factor: Factor, stats: dict, constants: dict, pairs) -> list | None:
    """Each member's kind, ``"global"`` (one element, read whole by every datum) or
    ``"indexed"`` (read through a data index), or None where the factor takes no column
    sums."""
    if factor.selector is not None or len(factor.latents) < 2:
        return None
    if any(a in factor.latents and b in factor.latents for a, b in pairs or {}):
        return None
    if not all(constants[name] for name in factor.latents):
        return None
    if sparse_form(factor.coefficients, factor.rank) is None:
        return None
    kinds = []
    for name in factor.latents:
        if name in factor.index:
            kinds.append("indexed")
        elif stats[name].shape[:-1].numel() == 1:
            kinds.append("global")
        else:
            return None  # varies along the elements unread through an index
    return kinds if "indexed" in kinds else None


def _partition(factor: Factor, kinds: list, out: int | None, stats: dict) -> _Partition:
    """The column partition for output ``out`` (an indexed member's position, or None for
    a total), made once per coefficients tensor."""
    key = id(factor.coefficients)
    if key not in _PARTITIONS:
        _PARTITIONS[key] = {}
        weakref.finalize(factor.coefficients, _PARTITIONS.pop, key, None)
    cache = _PARTITIONS[key]
    if out not in cache:
        cache[out] = _make_partition(factor, kinds, out, stats)
    return cache[out]


def _make_partition(factor: Factor, kinds: list, out: int | None, stats: dict) -> _Partition:
    values, picks = sparse_form(factor.coefficients, factor.rank)
    digits = torch.stack([p.argmax(0) for p in picks], -1)  # [M, m]
    indexed = [j for j, kind in enumerate(kinds) if kind == "indexed"]
    used = digits[:, indexed] != 0  # [M, indexed members]: which columns read each
    flat = values.reshape(-1, values.shape[-1])  # [E, M]
    groups = {}  # the block each column goes to: a member's position, -1 for all data
    for c in range(digits.shape[0]):
        reading = [indexed[i] for i in torch.nonzero(used[c]).flatten().tolist()]
        if out is not None:
            others = [j for j in reading if j != out]
            groups[c] = out if not others else None
        elif len(reading) <= 1:
            groups[c] = reading[0] if reading else -1
        else:
            groups[c] = None
    blocks = []
    for member in sorted({g for g in groups.values() if g is not None}):
        columns = torch.tensor([c for c, g in groups.items() if g == member], device=flat.device)
        if member == -1:
            table = flat[:, columns].sum(0)
            blocks.append(_Block(None, table, digits[columns]))
            continue
        name = factor.latents[member]
        index = factor.index[name].expand(values.shape[:-1]).reshape(-1)
        count = stats[name].shape[:-1].numel()
        table = flat.new_zeros((count, len(columns))).index_add_(0, index, flat[:, columns])
        blocks.append(_Block(member, table, digits[columns]))
    rest = [c for c, g in groups.items() if g is None]
    if not rest:
        return _Partition(blocks, None)
    columns = torch.tensor(rest, device=flat.device)
    form = (values[..., columns].contiguous(), [p[:, columns] for p in picks])
    return _Partition(blocks, form)


def _blocks(blocks: list, factor: Factor, kinds: list, stats: dict, keep, size: int):
    """The blocks' part: a total [1] (``keep`` None), or the message to member ``keep``,
    [B] for a global one, [G, B] for an indexed one (its groups' sums)."""
    out = None
    for block in blocks:
        weights = block.table  # [M_b] or [G, M_b]
        for j, name in enumerate(factor.latents):
            if j == keep or (kinds[j] == "indexed" and j != block.member):
                continue  # kept, or an indexed latent the block's columns do not read
            et = stats[name].reshape(-1, stats[name].shape[-1])  # [1 or G, B_j]
            picked = et[:, block.digits[:, j]]  # [1 or G, M_b]
            weights = weights * (picked[0] if kinds[j] == "global" else picked)
        if block.member is not None and block.member != keep:
            weights = weights.sum(0)  # over the groups of a member not kept
        if keep is None:
            part = weights.sum(-1, keepdim=True)
        else:
            # each column's weight added at the kept member's statistic in it
            part = weights.new_zeros(weights.shape[:-1] + (size,))
            part.index_add_(-1, block.digits[:, keep], weights)
        out = part if out is None else out + part
    return out


def _rest(form: tuple, factor: Factor, stats: dict, keep) -> torch.Tensor:
    """The per-datum columns contracted as ``contract`` does on a support: [*batch] for a
    total, [*batch, B] for the message to ``keep``."""
    return contract_gathered(form, support_terms(factor, stats, form[1], keep), keep)
