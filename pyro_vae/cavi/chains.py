"""Chains of Categorical latents (``pyro.markov``) kept whole in q and updated exactly by
forward-backward: structured mean field (Ghahramani & Jordan 1997; Saul & Jordan 1996).

A chain is a run of scalar Categorical sites s_0 → s_1 → … in which each site's prior
mentions exactly one other Categorical site, its predecessor, and each predecessor has one
successor (a ``pyro.markov`` loop: ``Categorical(logits=log_A[s_prev])``). Its factor of q
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

import warnings

import torch

from pyro_vae.cavi.conjugate_forms import Factor, Latent
from pyro_vae.cavi.expectations import contract
from pyro_vae.cavi.exponential_families import NotConjugateError
from pyro_vae.cavi.hmm import forward_backward


def find_chains(latents: dict[str, Latent], factors: list[Factor]) -> list[tuple[str, ...]]:
    """The maximal chains (length ≥ 2) of scalar Categorical sites, in sampling order.

    Warns (``UserWarning``) where three or more Categorical sites in a plate are linked as a
    chain (several sequences in a plate around one ``pyro.markov`` loop): those are fitted
    by mean field per site, a lower bound than the chain kept whole. Two linked sites (a
    two-level latent class, c_n → z_n) are a hierarchy, not a sequence to unroll."""
    categorical = {n for n, lat in latents.items() if lat.family.name == "Categorical"}
    parent = _parents(categorical, factors)
    in_plate = {c: p for c, p in parent.items() if latents[c].batch_shape}
    plated = sorted(c for c, p in in_plate.items() if p in in_plate)  # a third site above
    if plated:
        warnings.warn(
            f"AutoCAVI: the Categorical sites {plated[:3]}{' …' if len(plated) > 3 else ''} "
            "form Markov chains inside a plate (several sequences in one pyro.markov loop); "
            "only chains of unplated sites are kept whole by forward-backward, so these are "
            "fitted by mean field per site, a lower bound. Unroll the sequences into "
            "separate unplated sites (one pyro.markov loop per sequence) to keep each chain "
            "whole",
            stacklevel=3,
        )
    parent = {c: p for c, p in parent.items() if not latents[c].batch_shape
              and not latents[p].batch_shape}  # fmt: skip
    categorical = {n for n in categorical if not latents[n].batch_shape}
    children: dict[str, list[str]] = {}
    for child, p in parent.items():
        children.setdefault(p, []).append(child)
    chains = []
    for name in latents:
        if name not in categorical or len(children.get(parent.get(name), ())) == 1:
            continue  # not a head: its predecessor's only successor
        chain = [name]
        while len(children.get(chain[-1], ())) == 1:
            chain.append(children[chain[-1]][0])
        if len(chain) > 1:
            chains.append(tuple(chain))
    for chain in chains:
        _check_links(chain, factors)
    return chains


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


def update_chain(chain, factors, stats, pairs) -> tuple[torch.Tensor, torch.Tensor, float]:
    """q(chain) from its expected messages: (marginals [T, K], pairwise [T−1, K, K],
    its entropy in nats)."""
    index = {s: t for t, s in enumerate(chain)}
    k = stats[chain[0]].shape[-1]
    unary = torch.zeros(len(chain), k, dtype=torch.float64)
    pairwise = torch.zeros(len(chain) - 1, k, k, dtype=torch.float64)
    for f in factors:
        following = [s for s in f.latents if s in index]
        if f.selector in index and following:  # a transition: s_{t−1} picks s_t's row
            message = contract(f, stats, (f.selector, following[0]), pairs)
            pairwise[index[f.selector]] += message.reshape(-1, k, k).sum(0)
            continue
        if f.selector in index:  # an emission mixture: s_t picks its component
            message = contract(f, stats, (f.selector,), pairs)  # [*batch, K]
            unary[index[f.selector]] += message.reshape(-1, k).sum(0)
            continue
        mentioned = sorted(following, key=index.get)
        if len(mentioned) == 1:
            unary[index[mentioned[0]]] += (
                contract(f, stats, tuple(mentioned), pairs).reshape(-1, k).sum(0)
            )
        elif len(mentioned) == 2:
            message = contract(f, stats, tuple(mentioned), pairs).reshape(-1, k, k).sum(0)
            if f.latents.index(mentioned[0]) > f.latents.index(mentioned[1]):
                message = message.T
            pairwise[index[mentioned[0]]] += message
    # one message matrix per step: a chain's transitions may differ from step to step
    log_z, marginals, pair_marginals = forward_backward(
        torch.zeros(k, dtype=torch.float64), pairwise, unary
    )
    entropy = float(log_z - (marginals * unary).sum() - (pair_marginals * pairwise).sum())
    return marginals, pair_marginals, entropy
