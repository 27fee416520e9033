"""Chains of Categorical latents (``pyro.markov``) kept whole in q and updated exactly by
forward-backward: structured mean field (Ghahramani & Jordan 1997; Saul & Jordan 1996).

A chain is a run of Categorical sites s_0 → s_1 → … in which each site's prior mentions
exactly one other Categorical site, its predecessor, and each predecessor has one successor
(a ``pyro.markov`` loop: ``Categorical(logits=log_A[s_prev])``). Its sites are scalar, or
share their plates (several sequences in a plate: one chain per element, the batch of them
updated together). Its factor of q
is the HMM

    q(s_0, …, s_{T−1}) ∝ exp(Σ_t u_t(s_t) + Σ_t ψ_t(s_{t−1}, s_t)),

u_t the expected messages of the factors that mention s_t alone among the chain (as a
latent, or as the selector of a mixture, ``Vindex(theta)[..., s_t]``), ψ_t those
of the factors that mention s_{t−1} and s_t (its transition, which may differ from step to
step: a time-inhomogeneous chain, ``log_A[t][s_prev]``, or one whose steps see different
latents; or a mixture whose selector s_{t−1} picks s_t's row of a transition matrix with
latent rows in a plate of the K states, ``Categorical(Vindex(A)[..., s_prev, :])``: the
Bayesian HMM of MacKay 1997 and Beal 2003). Updating it is one pass of
:func:`pyro_vae.cavi.hmm.forward_backward`, which gives the marginals, the pairwise
marginals and log Z, and H[q] = log Z − Σ_t E[u_t] − Σ_t E[ψ_t].
"""

from __future__ import annotations

import math

import torch

from pyro_vae.cavi.caller_warnings import warn_at_caller
from pyro_vae.cavi.expectations import contract, sum_to
from pyro_vae.cavi.exponential_families import NotConjugateError
from pyro_vae.cavi.factor_form import Factor
from pyro_vae.cavi.hmm import forward_backward
from pyro_vae.cavi.latent_units import Latent
from pyro_vae.cavi.stacked_factors import FOLLOWING, SELECTOR, stack_chain_factors


def find_chains(latents: dict[str, Latent], factors: list[Factor]) -> list[tuple[str, ...]]:
    """The maximal chains (length ≥ 2) of Categorical sites of as many states, in sampling
    order.

    The sites of a chain share one batch shape: unplated (one sequence), or in the same
    plates (several sequences in a plate around one ``pyro.markov`` loop, each element its
    own chain, updated by one batched forward-backward) where no factor reads a chain site
    through a data index. Warns (``UserWarning``) where a plated Categorical site reads a
    plated predecessor otherwise (through an index, or in other plates or dims): that link
    is fitted by mean field, a lower bound than the chain kept whole."""
    categorical = {n for n, lat in latents.items() if lat.family.name == "Categorical"}
    parent = _parents(categorical, factors)
    # a chain's sites share their number of states (a c_n → z_n hierarchy of 2 and 3
    # classes is two mean-field factors, as any hierarchy of unlike classes)
    parent = {c: p for c, p in parent.items() if latents[c].family.k == latents[p].family.k}
    indexed = {n for f in factors for n in f.index}
    kept = {
        c: p for c, p in parent.items()
        if latents[c].batch_shape == latents[p].batch_shape and not {c, p} & indexed
    }  # fmt: skip
    linked = sorted(
        c for c, p in parent.items()
        if c not in kept and latents[c].batch_shape and latents[p].batch_shape
    )  # fmt: skip
    if linked:
        warn_at_caller(
            f"AutoCAVI: the Categorical sites {linked[:3]}{' …' if len(linked) > 3 else ''} "
            "read a plated predecessor that forward-backward cannot keep in one chain with "
            "them (through a data index, or in other plates or plate dims), so that link is "
            "fitted by mean field, a lower bound. Put every step of a sequence in the same "
            "plates, read at its own element",
        )
    following = _longest_successor(list(latents), kept)
    continued = set(following.values())
    chains = []
    for name in latents:
        if name not in categorical or name in continued:
            continue  # not a head: the chain through its predecessor goes on to it
        chain = [name]
        while chain[-1] in following:
            chain.append(following[chain[-1]])
        if len(chain) > 1:
            chains.append(tuple(chain))
    for chain in chains:
        _check_links(chain, factors)
    return chains


def _longest_successor(order: list[str], parent: dict[str, str]) -> dict[str, str]:
    """{site: the child its chain goes on to}: of several children (an HMM's next state
    s_{t+1} and an emission z_t ~ Categorical(W[s_t]) of as many classes), the one with the
    longest line of descendants, the first in sampling order on a tie; the others head
    chains of their own (a leaf alone is mean field). Taking none of several children cut
    such an HMM at every step (tester 22's F2: 0.77 nats lost, silently)."""
    children: dict[str, list[str]] = {}
    for name in order:
        if name in parent:
            children.setdefault(parent[name], []).append(name)
    depth, following, position = {}, {}, {name: i for i, name in enumerate(order)}
    for name in reversed(order):  # children come after their parents
        below = children.get(name, ())
        depth[name] = 1 + max((depth[c] for c in below), default=0)
        if below:
            following[name] = max(below, key=lambda c: (depth[c], -position[c]))
    return following


def _parents(categorical: set, factors: list[Factor]) -> dict[str, str]:
    """{Categorical site: the one other Categorical site its own factor reads}: a transition
    read as ``log_A[s_prev]`` or as a mixture, ``Vindex(A)[..., s_prev, :]``."""
    parent = {}
    for f in factors:
        if f.name in categorical and (f.selector is None or f.name in f.latents):
            others = [n for n in (*f.latents, f.selector) if n in categorical and n != f.name]
            if len(others) == 1:
                parent[f.name] = others[0]
    return parent


def _check_links(chain: tuple[str, ...], factors: list[Factor]) -> None:
    index = {s: t for t, s in enumerate(chain)}
    for f in factors:
        at = sorted(index[s] for s in (*f.latents, f.selector) if s in index)
        if (
            (f.selector in index and len(at) > 1 and index[f.selector] != at[0])
            or len(at) > 2
            or (len(at) == 2 and at[1] - at[0] != 1)
        ):
            raise NotConjugateError(
                f"factor {f.name!r} mentions the sites {[chain[t] for t in at]} of the Markov "
                f"chain {chain[0]!r} … {chain[-1]!r}, not one site or two neighbours (or one "
                "site picking a mixture's component); "
                "forward-backward cannot keep that chain whole (pass markov_chains=False "
                "for one factor per site)"
            )


def update_chain(chain, factors, stats, pairs, present=None, stacked=None, imputed=frozenset()):
    """q(chain) from its expected messages: (marginals [T, *batch, K], pairwise
    [T−1, *batch, K, K], the entropy in nats of its elements present in the model, summed
    over the batch, and which are absent, [T, *batch] bool); ``batch``: the sites' plates,
    one chain per element. ``present``: each site's mask of the elements its own factor
    keeps ([*batch] bool, or None: all). ``stacked``: ``factors`` already grouped by
    :func:`~pyro_vae.cavi.stacked_factors.stack_chain_factors` (the factors not stacked,
    the stacks), kept by the caller across sweeps; None: grouped here.

    An element masked off (ragged sequences: the steps past a sequence's end) and mentioned
    by no factor is absent from the model, as for a site outside any chain: all its
    potentials are 0, so q holds it uniform and independent of the rest, and its log K of
    entropy is left out of the bound (counted, the bound of ragged sequences with every
    parameter known rose above log p(Y) by log K per absent element: tester 22's F1). So
    is an element of a site in ``imputed`` (obs_mask's ``<site>_unobserved``) where it is
    masked off: the data are observed there (see :func:`_absent`)."""
    index = {s: t for t, s in enumerate(chain)}
    batch, k = stats[chain[0]].shape[:-1], stats[chain[0]].shape[-1]
    one, two = batch + (k,), batch + (k, k)
    device = stats[chain[0]].device
    unary = torch.zeros((len(chain),) + one, dtype=torch.float64, device=device)
    pairwise = torch.zeros((len(chain) - 1,) + two, dtype=torch.float64, device=device)
    factors, stacks = stacked or stack_chain_factors(factors, set(chain), stats, pairs)
    for stack in stacks:  # the steps' emissions, or transitions, in one contraction each
        stacked, linked = stack.statistics(stats, pairs)
        at = torch.tensor([index[s] for s in stack.selectors], device=device)
        if stack.following is not None:  # s_{t−1} picks s_t's row
            message = contract(stack.factor, stacked, (SELECTOR, FOLLOWING), linked)
            pairwise.index_add_(0, at, sum_to(message, (len(at),) + two))
        else:  # s_t picks its emission's component
            message = contract(stack.factor, stacked, (SELECTOR,), linked)
            unary.index_add_(0, at, sum_to(message, (len(at),) + one))
    for f in factors:
        following = [s for s in f.latents if s in index]
        if f.selector in index and following:  # a transition: s_{t−1} picks s_t's row
            message = contract(f, stats, (f.selector, following[0]), pairs)
            pairwise[index[f.selector]] += sum_to(message, two)
            continue
        if f.selector in index:  # an emission mixture: s_t picks its component
            message = contract(f, stats, (f.selector,), pairs)  # [*batch, K]
            unary[index[f.selector]] += sum_to(message, one)
            continue
        mentioned = sorted(following, key=index.get)
        if len(mentioned) == 1:
            unary[index[mentioned[0]]] += sum_to(contract(f, stats, tuple(mentioned), pairs), one)
        elif len(mentioned) == 2:
            message = sum_to(contract(f, stats, tuple(mentioned), pairs), two)
            if f.latents.index(mentioned[0]) > f.latents.index(mentioned[1]):
                message = message.transpose(-1, -2)
            pairwise[index[mentioned[0]]] += message
    # one message matrix per step: a chain's transitions may differ from step to step
    log_z, marginals, pair_marginals = forward_backward(
        torch.zeros(k, dtype=torch.float64, device=device), pairwise, unary
    )
    entropy = log_z.sum() - (marginals * unary).sum() - (pair_marginals * pairwise).sum()
    absent = _absent(chain, unary, pairwise, present, imputed)
    return marginals, pair_marginals, float(entropy) - math.log(k) * int(absent.sum()), absent


def _absent(chain, unary, pairwise, present, imputed=frozenset()) -> torch.Tensor:
    """[T, *batch] bool: the elements masked off their own site and with no potential
    (past a ragged sequence's end), or masked off a site of ``imputed`` (``obs_mask``'s
    ``<site>_unobserved`` where the data are observed: every factor reads the data there,
    through ``torch.where``, so its potentials do not depend on it; tester Z's partly
    labelled HMM was log 2 above log p(Y) per label). Such an element is uniform and
    independent of the rest in q. Decided by structure, not by potentials that happen to
    be constant: a step masked off but read by its emission is a flat prior, also where
    the emission's likelihoods tie (tester AB)."""
    silent = (unary == 0).all(-1)
    idle = (pairwise == 0).all(-1).all(-1)  # [T − 1, *batch]: the links
    silent[1:] &= idle
    silent[:-1] &= idle
    for t, site in enumerate(chain):
        if site in imputed:
            silent[t] = True
    masked = torch.stack([
        torch.zeros(silent.shape[1:], dtype=torch.bool, device=silent.device)
        if (present or {}).get(s) is None
        else ~present[s].expand(silent.shape[1:])
        for s in chain
    ])  # fmt: skip
    return silent & masked
