"""Adaptive over-relaxed steps between CAVI sweeps, for ``AutoCAVI``.

Mean-field CAVI on Gaussian latents is block Gauss-Seidel on the posterior means, and it
crawls where latents are confounded: crossed random effects μ + a[subject] + b[item] took
1,136 sweeps to a fixed point (each sweep moves the shared offset between μ, a and b by a
fixed fraction). After each sweep θ_t → θ_{t+1} of the factors' natural parameters η,
:func:`overrelaxed_q` proposes η_t + r (η_{t+1} − η_t), a step r ≥ 2 times as long along
the sweep's direction (Salakhutdinov & Roweis 2003, "Adaptive overrelaxed bound
optimization methods", ICML: their EM step, here a CAVI sweep). ``AutoCAVI`` keeps the
proposal only when its ELBO, computed in full, exceeds the sweep's, doubling r each time one
is kept (up to 2¹⁶) and halving it (down to 2) when one is not; so the bound never falls, and
the fixed point is the plain sweep's. No longer step is tried after sweeps whose gains
shrink fast (:func:`crawling`) while none has been kept: they converge on their own, and a
trial would cost an ELBO a sweep for nothing (after a kept step the next sweep's gain is
small beside the step's, whatever is left, so the ratio says nothing there). The fit ends
when a sweep changes the bound by less than ``tol`` and so does the longer step after it
(kept), or the shortest step is declined: on a ridge a sweep's change is no measure of the
distance left. Crossed intercepts sharing a level (tester 12: 2.27 nats short after 1,000
plain sweeps, 4·10⁵ to converge) stop 25 sweeps in, 2e-7 nats short; where the step it
would need is longer still, the fit can stop short of the optimum by more than ``tol``, as
plain sweeps do.

Each η is taken in the coordinates its update was made in (a probe frame's local ones,
:mod:`pyro_vae.cavi.probe_frames`), which stay fixed within a round of sweeps. A proposal
outside the family's natural-parameter space (a precision no longer positive definite) is
not a distribution, and is declined.
"""

from __future__ import annotations

from pyro_vae.cavi.exponential_families import NotConjugateError
from pyro_vae.cavi.probe_frames import q_from_local

#: Sweeps whose gain shrinks faster than this ratio a sweep are not crawling: a longer step is
#: not tried after them (it would be declined: the regression's gains fall 2,000-fold a
#: sweep), and the distance left, about gain·ρ/(1 − ρ), is below the last gain.
CRAWL = 0.5
#: The first over-relaxed step's length in sweeps, after a start or a declined proposal.
FIRST_RATE = 2.0
#: The longest step tried: past this, a kept proposal's rate stays.
MAX_RATE = 2.0**16


def overrelaxed_q(before: dict, after: dict, latents: dict, frames: dict, rate: float):
    """The factors q at η = η_before + ``rate``·(η_after − η_before) for every latent, as
    {latent: q}, or None where one lies outside its family's natural-parameter space.

    Args:
        before, after: {latent: η} before and after a sweep, [*batch, B − 1] (B for a
            Categorical), each in its frame's local coordinates where ``frames`` has one.
        latents: {latent: Latent}, for each latent's family.
        frames: {latent: Frame} the updates were made in.
    """
    out = {}
    for name, eta in after.items():
        family = latents[name].family
        try:
            q = family.distribution(before[name] + rate * (eta - before[name]))
        except NotConjugateError:
            return None
        frame = frames.get(name)
        out[name] = q if frame is None else q_from_local(family, q, frame)
    return out


def crawling(gains: list) -> bool:
    """Whether the sweeps whose bound gains are ``gains`` (nats, the first inf) crawl: the
    last gain is at least :data:`CRAWL` of the one before, or there is no ratio yet."""
    return len(gains) < 3 or gains[-1] >= CRAWL * gains[-2]


def next_rate(rate: float, kept: bool) -> float:
    """The next proposal's rate: doubled (at most :data:`MAX_RATE`) after one was kept,
    halved (at least :data:`FIRST_RATE`) after one was declined."""
    return min(2 * rate, MAX_RATE) if kept else max(rate / 2, FIRST_RATE)
