"""A Markov chain's step factors stacked into one, for ``AutoCAVI``'s sweeps.

A chain of T steps kept whole has T factors of one form picked by its sites (a Bayesian
HMM's emissions y_t, picked by s_t, ``Normal(Vindex(mu)[..., s_t], 1)``) and T − 1 of
another (its transitions s_t, whose row of A s_{t−1} picks), each with its own
coefficients. A sweep contracted each of them apart, several times (messages to the
chain, to A and to μ, and the bound), some 50 µs a contraction: most of a long chain's
sweep. Stacked along a new leading dim of the batch, each such group is one contraction.

A group holds the mixture factors whose selector is a chain site and whose other latents
(those outside the chain, and the one chain site a transition picks a row for), rank,
coefficients' shape and components are alike, and which read no latent through a data
index. In its stacked factor the selector and that chain site are renamed
:data:`SELECTOR` and :data:`FOLLOWING`, whose statistics (and pairwise marginals) are the
steps' stacked in the same order (:meth:`Stack.statistics`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from pyro_vae.cavi.factor_form import Factor

SELECTOR, FOLLOWING = "@selector", "@following"


@dataclass(frozen=True)
class Stack:
    """Factors of one form stacked: ``factor`` (coefficients [S, *batch, …], rank + 1), the
    chain sites that select in each (``selectors``) and, for transitions, the sites whose
    rows they pick (``following``, else None)."""

    factor: Factor
    selectors: tuple[str, ...]
    following: tuple[str, ...] | None

    def statistics(self, stats: dict, pairs: dict) -> tuple[dict, dict]:
        """(``stats`` and ``pairs`` with the placeholders' stacked: E[one-hot] [S, *batch, K]
        of the selectors and the following sites, their pairwise marginals [S, *batch, K,
        K])."""
        stats = {**stats, SELECTOR: torch.stack([stats[s] for s in self.selectors])}
        if self.following is None:
            return stats, pairs
        stats[FOLLOWING] = torch.stack([stats[s] for s in self.following])
        links = zip(self.selectors, self.following, strict=True)
        joint = torch.stack([pairs[link] for link in links])
        return stats, {**pairs, (SELECTOR, FOLLOWING): joint}


def stack_chain_factors(factors, chain_sites, stats, pairs) -> tuple[list[Factor], list[Stack]]:
    """(the factors not stacked, the stacks) of ``factors``: groups of two or more chain
    step factors of one form (see the module docstring) stacked; ``chain_sites``: the
    sites of the chains q keeps whole; ``stats``: the latents' expected statistics (a
    selector's batch must span the factor's, less its K-axis, for the stacked dim to lead
    both); ``pairs``: the chains' links (a transition's selector and the site it picks a
    row for must be one)."""
    groups: dict = {}
    rest = []
    for factor in factors:
        key = _form(factor, chain_sites, stats, pairs)
        if key is None:
            rest.append(factor)
        else:
            groups.setdefault(key, []).append(factor)
    stacks = []
    for (latents, *_), members in groups.items():
        if len(members) < 2:
            rest.extend(members)
        else:
            stacks.append(_stack(members, latents, chain_sites))
    return rest, stacks


def _form(factor: Factor, chain_sites, stats, pairs) -> tuple | None:
    """The form a step factor shares with the others of its group, or None where it is no
    such factor: also where the chain site it reads is not the next site of its selector's
    chain (s_t picking z_t's row, z_t heading a chain of its own: no pairwise marginal
    joins them, and stacked as a transition it looked one up, tester 24)."""
    if factor.selector not in chain_sites or factor.index or factor.rows is not None:
        return None
    if stats[factor.selector].dim() != factor.rank:  # [*batch, K] against [*batch, K-axis]
        return None
    linked = [n for n in factor.latents if n in chain_sites]
    if len(linked) > 1 or factor.selector in factor.latents:
        return None
    if linked and (factor.selector, linked[0]) not in pairs:
        return None
    others = tuple(FOLLOWING if n in chain_sites else n for n in factor.latents)
    shape = tuple(factor.coefficients.shape)
    return others, shape, factor.rank, factor.components, factor.distribution


def _stack(members: list[Factor], latents: tuple, chain_sites) -> Stack:
    """``members``' stack, ``latents`` their shared latents (:data:`FOLLOWING` for the
    chain site a transition reads)."""
    first = members[0]
    following = None
    if FOLLOWING in latents:  # a transition: the row's site
        following = tuple(next(n for n in m.latents if n in chain_sites) for m in members)
    factor = replace(
        first,
        name=f"{first.name} … {members[-1].name}",
        latents=latents,
        coefficients=torch.stack([m.coefficients for m in members]),
        rank=first.rank + 1,
        selector=SELECTOR,
        magnitude=sum(m.magnitude for m in members),
        component_magnitudes=None,
        local=None,
    )
    return Stack(factor, tuple(m.selector for m in members), following)
