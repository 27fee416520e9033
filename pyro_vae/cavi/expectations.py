"""Expectations of probed factors under q: E_q[log f] and its gradients in E_q[T_j].

A factor's coefficients C (:class:`pyro_vae.cavi.factor_form.Factor`) contracted with
the expected statistics of its latents give E_q[log f] exactly (multilinearity); leaving
latent j's axis uncontracted gives ∂E_q[log f]/∂E[T_j], j's natural-parameter message
(Winn & Bishop 2005). Two consecutive sites of a Markov chain that q keeps whole are
contracted with their pairwise marginal, not the product of their marginals.
"""

from __future__ import annotations

import string

import torch

from pyro_vae.cavi.data_indexing import read_by_index
from pyro_vae.cavi.factor_form import Factor, batch_view
from pyro_vae.cavi.factor_support import contract_gathered, sparse_form
from pyro_vae.cavi.mixture_components import (
    factor_layout_shape,
    k_dim,
    to_factor_layout,
    to_latent_layout,
)


def contract(factor: Factor, stats: dict, keep=(), pairs=None) -> torch.Tensor:
    """C contracted with every latent's E_q[T] but those in ``keep`` (and with a mixture's
    E_q[one-hot z]); ``pairs`` maps a chain link (a, b) to E_q[one-hot a ⊗ one-hot b],
    [*batch, K_a, K_b] (batch: a plated chain's plates, else empty).

    Returns [*batch, B_k for k in keep, in the factor's order] (E_q[log f] per element when
    ``keep`` is empty): per factor element, so a kept latent read through a data index gets
    its message summed back with :func:`~pyro_vae.cavi.data_indexing.scatter_by_index`
    (a component in several plates: with :func:`message_to`)."""
    sparse = _on_support(factor, stats, keep, pairs)
    if sparse is not None:
        return sparse
    c = factor.coefficients
    remaining = list(factor.latents)
    c, remaining, weighted = _selector_pair(factor, c, remaining, keep, pairs)
    # looked up by key (a chain of T steps has T − 1 pairs; a factor reads at most one)
    linked = [(a, b) for a in remaining for b in remaining if (a, b) in (pairs or {})]
    for a, b in linked:
        joint = pairs[(a, b)]  # [*batch (a plated chain's), K_a, K_b]
        if a in remaining and b in remaining and a not in keep and b not in keep:
            view = batch_view(factor, a, joint.shape[:-2]) + tuple(
                joint.shape[-2] if m == a else joint.shape[-1] if m == b else 1 for m in remaining
            )
            axes = (factor.rank + remaining.index(a), factor.rank + remaining.index(b))
            c = (c * joint.reshape(view)).sum(axes)  # a chain's K x K: small
            remaining = [m for m in remaining if m not in (a, b)]
    for name in reversed(list(remaining)):
        if name in keep:
            continue
        et = read_statistics(factor, name, stats[name])
        view = batch_view(factor, name, et.shape[:-1])
        view += tuple(et.shape[-1] if m == name else 1 for m in remaining)
        c = product_sum(c, et.reshape(view), factor.rank + remaining.index(name))
        remaining.remove(name)
    if weighted:  # the K-axis already holds q(selector, neighbour)
        return c if set(keep) & factor.components else c.sum(factor.rank - 1)
    if factor.selector is not None and factor.selector not in keep:
        # [*batch_z, K] against the factor's K-axis (at a mixture of groups' data index)
        probs = read_statistics(factor, factor.selector, stats[factor.selector])
        view = (1,) * (factor.rank - probs.dim()) + tuple(probs.shape)
        probs = probs.reshape(view + (1,) * len(remaining))
        if set(keep) & factor.components:
            return c * probs
        c = product_sum(c, probs, factor.rank - 1)
    return c


def _selector_pair(factor: Factor, c: torch.Tensor, remaining: list, keep, pairs):
    """(c, remaining, whether its K-axis is weighted): a mixture whose selector and one of
    its latents are neighbours in a chain q keeps whole (a transition, s_{t−1} picking s_t's
    row of a latent matrix) is contracted over that latent with their pairwise marginal
    q(s_{t−1} = k, s_t = j) along its K-axis and that latent's axis, not the product of
    their marginals; as it was otherwise."""
    if factor.selector is None or factor.selector in keep or not pairs:
        return c, remaining, False
    for other in remaining:  # looked up by key: a chain of T steps has T − 1 pairs
        after, before = pairs.get((factor.selector, other)), pairs.get((other, factor.selector))
        if other not in keep and (after is not None or before is not None):
            # [*batch (a plated chain's), K, B of other]
            joint = after if after is not None else before.transpose(-1, -2)
            view = batch_view(factor, factor.selector, joint.shape[:-2])[:-1]
            view += (joint.shape[-2],)
            view += tuple(joint.shape[-1] if m == other else 1 for m in remaining)
            c = (c * joint.reshape(view)).sum(factor.rank + remaining.index(other))
            return c, [m for m in remaining if m != other], True
    return c, remaining, False


def read_statistics(factor: Factor, name: str, et: torch.Tensor, leading: int = 0):
    """A latent's statistics ``et`` [*lead (``leading`` dims), *batch, B] as ``factor``'s
    elements read them: at its data index where it is read through one (see
    :mod:`~pyro_vae.cavi.data_indexing`), else as they are."""
    if name in factor.index:
        return read_by_index(et, factor.index[name], leading)
    return to_factor_layout(et, k_dim(factor.components, name), 1)


def message_to(factor: Factor, name: str, message: torch.Tensor, shape) -> torch.Tensor:
    """``factor``'s message to latent ``name`` as :func:`contract` gives it, [*batch, B]
    per factor element, summed to ``name``'s ``shape`` [*its batch, B] (a component in
    more plates than the K categories' laid back out, see
    :mod:`~pyro_vae.cavi.mixture_components`)."""
    dim = k_dim(factor.components, name)
    if dim is None:
        return sum_to(message, shape)
    laid = factor_layout_shape(shape, dim, 1)
    message = message.reshape((1,) * (len(laid) - message.dim()) + tuple(message.shape))
    return to_latent_layout(sum_to(message, laid), dim, 1)


def _on_support(factor: Factor, stats: dict, keep, pairs) -> torch.Tensor | None:
    """:func:`contract` on the factor's nonzero columns where it was solved on its support
    (:mod:`~pyro_vae.cavi.factor_support`) and is no mixture's, at most one latent is
    kept, and no chain link joins two of its latents; else None."""
    if factor.selector is not None or len(keep) > 1:
        return None
    if any(a in factor.latents and b in factor.latents for a, b in pairs or {}):
        return None
    form = sparse_form(factor.coefficients, factor.rank)
    if form is None:
        return None
    kept = factor.latents.index(keep[0]) if keep else None
    return contract_gathered(form, support_terms(factor, stats, form[1], kept), kept)


def support_terms(factor: Factor, stats: dict, picks: list, kept: int | None) -> list:
    """Each member's E_q[T] (but member ``kept``'s) at its statistic in every column of a
    support (``picks``: each member's 0/1 [B_j, M]), as the factor's elements read it,
    [*view_j, M]: picked first, then read through a data index where there is one."""
    terms = []
    for j, name in enumerate(factor.latents):
        if j == kept:
            continue
        table = read_statistics(factor, name, stats[name] @ picks[j])
        terms.append(table.reshape(batch_view(factor, name, table.shape[:-1]) + table.shape[-1:]))
    return terms


#: Products of up to about this many elements are made and summed rather than einsum'd.
_SMALL = 1 << 16


def component_message(factor: Factor, stats: dict, name: str, shape, pairs=None):
    """The message of mixture ``factor`` to its component ``name``, [*shape], summed over the
    factor's elements in one contraction, Σ_n q(z_n = k) C_nk(other members' E[T]), not
    made per element ([*batch, K, B], as :func:`contract` then :func:`message_to` give it:
    two passes over 55 MB a sweep at N = 30,000, K = 10, D = 5); None where the component
    is read through a data index or lies in more plates than the K categories', or where a
    chain link joins the factor's latents (those take :func:`contract`)."""
    selector = factor.selector
    if selector is None or name not in factor.components or factor.rank < 2:
        return None
    if name in factor.index or k_dim(factor.components, name) is not None:
        return None
    linked = set(factor.latents) | {selector}
    if any(a in linked or b in linked for a, b in pairs or {}):
        return None
    c = contract(factor, stats, (name, selector), pairs)  # [*batch, K, B]
    probs = read_statistics(factor, selector, stats[selector])  # [*batch_z, K]
    probs = probs.reshape((1,) * (factor.rank - probs.dim()) + tuple(probs.shape) + (1,))
    return sum_to(product_sum(c, probs, tuple(range(factor.rank - 1))), shape)


def product_sum(a: torch.Tensor, b: torch.Tensor, axis) -> torch.Tensor:
    """``(a * b).sum(axis)`` (``axis``: a dim or a tuple of them) for broadcastable ``a``
    and ``b``, by ``torch.einsum``, which contracts without making the broadcast product:
    a mixture's coefficients [N, K, B] against 16 points' statistics [16, 1, K, B] would be
    a [16, N, K, B] temporary (880 MB at N = 30,000, K = 10, B = 23; 30x slower). A small
    product is made and summed: einsum's planning costs more there (a regression's sweeps
    took 1.5x as long). An operand expanded along a dim the other spans is read once
    there (:func:`_read_once`)."""
    rank = max(a.dim(), b.dim())
    a = a.reshape((1,) * (rank - a.dim()) + tuple(a.shape))
    b = b.reshape((1,) * (rank - b.dim()) + tuple(b.shape))
    a = _read_once(a, b)
    b = _read_once(b, a)  # against a as cut: both expanded along a dim keep it once
    size = 1
    for m, n in zip(a.shape, b.shape, strict=True):
        size *= max(m, n)
    if size <= _SMALL:
        return (a * b).sum(axis)
    dtype = torch.result_type(a, b)  # einsum does not promote, as * does
    a, b = a.to(dtype), b.to(dtype)
    axes = {x % rank for x in (axis if isinstance(axis, tuple) else (axis,))}
    shared, spare = string.ascii_lowercase, iter(string.ascii_uppercase)
    left, right = [], []
    for i, (m, n) in enumerate(zip(a.shape, b.shape, strict=True)):
        left.append(shared[i] if m == n or m > 1 else next(spare))
        right.append(shared[i] if m == n or n > 1 else next(spare))
    out = "".join(shared[i] for i in range(rank) if i not in axes)
    return torch.einsum(f"{''.join(left)},{''.join(right)}->{out}", a, b)


def _read_once(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a`` with each dim along which it is expanded (stride 0, as a mixture's coefficients
    shared by its components) cut to size 1 where ``b`` spans it, so the product broadcasts
    to the same shape without reading ``a``'s copies."""
    for dim in range(a.dim()):
        if a.stride(dim) == 0 and a.shape[dim] > 1 and b.shape[dim] == a.shape[dim]:
            a = a.narrow(dim, 0, 1)
    return a


def sum_to(tensor: torch.Tensor, shape) -> torch.Tensor:
    """``tensor`` summed over the dims broadcasting added to ``shape`` (then expanded)."""
    while tensor.dim() > len(shape):
        tensor = tensor.sum(0)
    for dim, size in enumerate(shape):
        if size == 1 and tensor.shape[dim] != 1:
            tensor = tensor.sum(dim, keepdim=True)
    return tensor.expand(shape)
