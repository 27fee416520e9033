"""The states of a discrete guide, enumerated, and the exact answers they give.

When every latent site of q is discrete, the importance ratios r(z) = p(x_n, z) / q(z | x_n)
take at most K values, K the number of states of q(z | x_n), and have no generalized
Pareto tail for PSIS to fit. When K ≤ S the K states can be visited instead of S draws,
at no greater cost, giving log p(x_n), KL(q ‖ p(z | x_n)) and χ²(p(z | x_n) ‖ q) exactly
(:func:`pyro_vae.diagnostics.psis.psis_khat_per_datapoint` uses them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pyro.poutine as poutine
import torch
from pyro.poutine import Trace

from pyro_vae.traces import sample_sites


class DiscreteSite(NamedTuple):
    """A discrete site of a probe run: its base distribution's C values ``[C, *base event
    shape]``, how many of them its value holds (``units``), the value's shape, the position
    of the data plate's dim in it, and its event dim."""

    values: torch.Tensor
    units: int
    shape: torch.Size
    data_dim: int
    event_dim: int


@dataclass(frozen=True)
class DiscreteSupport:
    """The joint states of a guide whose sample sites are all discrete: ``count`` of them
    in a probe run (``math.inf`` when a support cannot be enumerated, or past 2**62)."""

    count: float
    sites: dict[str, DiscreteSite]


def discrete_support(probe: Trace, plate: str | None = None) -> DiscreteSupport | None:
    """None unless every sample site of a guide's ``probe`` trace has a discrete support.

    A site whose base distribution (under ``Independent``) enumerates C values and that
    holds u of them (its value's elements, or one-hot vectors) has C^u states; the guide
    has their product. With ``plate`` that is the number of states of q(z | x_n) for one
    datapoint (of a probe of any number of rows), and each site must lie in ``plate``.
    A site under ``poutine.mask`` (a padded sequence's steps) makes the count infinite:
    its masked elements score 0 at each of their C values, so the states would count each
    C times over (tester T's F4: refused as "q sums to 1 to 3"); the drawn ratios take it.
    """
    sites = sample_sites(probe)
    if not sites or not all(s["fn"].support.is_discrete for s in sites.values()):
        return None
    none = DiscreteSupport(math.inf, {})
    if any(site.get("mask") is not None for site in sites.values()):
        return none
    count, table = 1, {}
    for name, site in sites.items():
        entry = _enumerable(site, plate)
        if entry is None:
            return none
        if math.log(count) + entry.units * math.log(entry.values.shape[0]) > 62 * math.log(2):
            return none
        count *= entry.values.shape[0] ** entry.units
        table[name] = entry
    return DiscreteSupport(count, table)


def _enumerable(site: dict, plate: str | None) -> DiscreteSite | None:
    """The site's values and layout, or None when its support cannot be enumerated (or,
    with ``plate``, when it is not one row of ``plate``)."""
    base = site["fn"]
    while isinstance(base, torch.distributions.Independent):
        base = base.base_dist
    if not base.has_enumerate_support:
        return None
    try:
        values = base.enumerate_support(expand=False)
    except NotImplementedError:  # e.g. a Binomial whose total_count varies
        return None
    value, event_dim = site["value"], site["fn"].event_dim
    pos, shape = 0, value.shape
    if plate is not None:
        frames = [f for f in site["cond_indep_stack"] if f.name == plate]
        pos = value.dim() - event_dim + frames[0].dim if frames else -1
        if pos < 0 or frames[0].size != value.shape[pos]:
            return None
        shape = value.shape[:pos] + (1,) + value.shape[pos + 1 :]  # one datapoint's
    event = tuple(base.event_shape)
    values = values.reshape(values.shape[0], *event)
    units = shape.numel() // max(1, math.prod(event))
    return DiscreteSite(values, units, shape, pos, event_dim)


def state_values(
    support: DiscreteSupport, rows: int, start: int, count: int, nesting: int
) -> dict[str, tuple[torch.Tensor, int]]:
    """Joint states ``start .. start + count`` (mixed-radix digits over the sites' elements)
    as each site's value for ``rows`` datapoints, ``[count, *value shape]``, with the
    number of singleton dims that put its batch dims at the rank of a particle plate."""
    out = {}
    index = None
    for name, site in support.sites.items():
        if index is None:
            index = torch.arange(start, start + count, device=site.values.device)
        radix = site.values.shape[0]
        digits = torch.empty(count, site.units, dtype=torch.long, device=site.values.device)
        for j in range(site.units):
            digits[:, j] = index % radix
            index = index // radix
        value = site.values[digits].reshape(count, *site.shape)
        sizes = [count, *site.shape]
        sizes[site.data_dim + 1] = rows
        pad = nesting - (len(site.shape) - site.event_dim)
        out[name] = (value.expand(sizes).contiguous(), pad)
    return out


class StateGuide:
    """``guide`` with its sample sites set to given states instead of drawn: under a
    particle plate all K at once, or in a loop (``looped``) the next state on each call."""

    def __init__(self, guide, states: dict[str, tuple[torch.Tensor, int]], looped: bool):
        self.guide, self.states, self.looped, self.calls = guide, states, looped, 0

    def __call__(self, *args: Any, **kwargs: Any):
        trace = Trace()
        for name, (value, pad) in self.states.items():
            if self.looped:
                value = value[self.calls]
            else:
                value = value.reshape(value.shape[0], *(1,) * pad, *value.shape[1:])
            trace.add_node(name, type="sample", is_observed=False, value=value, infer={})
        self.calls += 1
        return poutine.replay(self.guide, trace=trace)(*args, **kwargs)


class ExactAnswers(NamedTuple):
    """Per datapoint: log p(x_n), KL(q(z | x_n) ‖ p(z | x_n)) and χ²(p(z | x_n) ‖ q(z | x_n))."""

    log_evidence: np.ndarray
    kl: np.ndarray
    chi2: np.ndarray


def exact_answers(log_p: torch.Tensor, log_q: torch.Tensor) -> ExactAnswers:
    """Exact log p(x_n), KL and χ² from log p(x_n, z_k) and log q(z_k | x_n) at every
    state z_k of q (``[K, N]``).

    Raises:
        ValueError: q(z | x_n) does not sum to 1 over the K states (to 1e-3 in log).
    """
    lp, lq = log_p.double(), log_q.double()
    mass = torch.logsumexp(lq, 0)
    # float32 log q of each of K ≤ S states is good to ~1e-6, far inside 1e-3
    if (mass.abs() > 1e-3).any():
        raise ValueError(
            f"guide: q(z | x_n) sums to {float(mass.exp().min()):.6g} to "
            f"{float(mass.exp().max()):.6g} over the {lp.shape[0]} states of its discrete "
            "sites; expected 1, i.e. sites whose supports do not depend on one another"
        )
    log_evidence = torch.logsumexp(lp, 0)
    log_post = lp - log_evidence
    kl = torch.where(lq > -math.inf, lq.exp() * (lq - log_post), 0.0).sum(0)
    chi2 = torch.logsumexp(
        torch.where(log_post > -math.inf, 2 * log_post - lq, -math.inf), 0
    ).expm1()
    return ExactAnswers(*(t.cpu().numpy() for t in (log_evidence, kl, chi2)))
