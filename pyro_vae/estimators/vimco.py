"""VIMCO: score-function gradients of the K-sample importance-weighted bound.

For datapoint x with samples h_1..h_K ~ q(h | x) and log-weights l_k = log p(x, h_k) −
log q(h_k | x), the bound L̂ = log (1/K) Σ_k exp(l_k) (Burda et al. 2015) has the unbiased
gradient estimator (Mnih & Rezende 2016, "Variational inference for Monte Carlo
objectives", eqs. 8-10)

    ∇ L̂ = Σ_k (L̂ − L̂_{−k}) ∇ log q(h_k | x) + Σ_k w̃_k ∇ l_k,

with w̃_k = exp(l_k) / Σ_j exp(l_j) held fixed, ∇ l_k taken with h_k fixed, and the
per-sample baseline L̂_{−k}: L̂ with l_k replaced by the mean of the other K − 1
log-weights (their geometric mean in weight space). It needs no reparameterization, so it
trains discrete latents on the same objective ``iwae`` trains continuous ones on. Each
datapoint of the per-datapoint plate (:func:`pyro_vae.plates.find_data_plate`) is its own
bound when every site lies in that plate, and the minibatch sum is scaled by N/|batch|;
otherwise the whole batch is one bound, as for ``iwae``.

A scale common to every site of model and guide (``poutine.scale(c)`` around both, how a
user rescales a minibatch they subsample themselves) multiplies the whole objective, so it
stays outside the log-sum-exp: c · log (1/K) Σ_k exp(l_k / c), as for ``iwae``
(:func:`pyro_vae.pointwise.common_scale`). A scale that differs between sites (β and KL
warm-up, :mod:`pyro_vae.annealing`; ``poutine.scale`` on the observations alone) and a mask
weigh that site's term of l_k; the score ∇ log q(h_k | x) is that of the distribution h_k was drawn
from, neither scaled nor masked (as Pyro's ``ScoreParts`` keep it). With β = 4 on a
Bernoulli latent, scaling the score too made the gradient +1185 where the β-bound's is +24.
"""

from __future__ import annotations

import math

import torch
from pyro.infer.enum import get_importance_trace

from pyro_vae.estimators.base import SurrogateELBO
from pyro_vae.estimators.capabilities import Capabilities
from pyro_vae.estimators.score_function import _DetachSamples
from pyro_vae.pointwise import (
    importance_log_densities,
    sampling_log_density,
    weights_factor,
)


class VIMCO(SurrogateELBO):
    """−Σ_n L̂_K(x_n) with VIMCO's leave-one-out score-function gradient; K ≥ 2.

    Args:
        num_particles: K ≥ 2, 5 by default (``get("vimco")`` too; the registry's other
            estimators but ``iwae`` default to 1 particle).
        max_plate_nesting, strict_enumeration_warning, vectorize_particles, data_plate:
            as :class:`~pyro_vae.estimators.iwae.IWAELBO`.

    Each datapoint of the per-datapoint plate is its own bound when every site lies in that
    plate; otherwise the batch is one bound (refused when subsampled).

    Raises:
        ValueError: ``num_particles`` below 2.
        pyro_vae.plates.DataPlateError: global latents in a subsampled model.
    """

    capabilities = Capabilities(
        keeps_state=False, needs_reparameterized=False, per_datapoint=True, recordable=True
    )
    importance_weighted = True  # a guide-only latent is refused (SurrogateELBO)
    #: each draw is scored detached (its score-function term), which runs a flow guide's
    #: inverse: not recorded by ``--compile auto`` (compiled.path_gradient_reason)
    scores_detached_draws = True

    def __init__(
        self,
        num_particles: int = 5,
        max_plate_nesting: float = float("inf"),
        strict_enumeration_warning: bool = True,
        vectorize_particles: bool | None = None,
        data_plate: str | None = None,
    ) -> None:
        super().__init__(
            num_particles,
            max_plate_nesting,
            strict_enumeration_warning,
            min_particles=2,
            too_few="is too few; VIMCO's leave-one-out baseline needs at least 2 samples",
            vectorize_particles=vectorize_particles,
            data_plate=data_plate,
        )

    def _get_trace(self, model, guide, args, kwargs):
        return get_importance_trace(
            "flat", self.max_plate_nesting, model, _DetachSamples()(guide), args, kwargs
        )

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """A surrogate whose value is −Σ_n L̂(x_n) and whose gradient is VIMCO's estimate."""
        model_trace, guide_trace, rank = self.particle_traces(model, guide, args, kwargs)
        plate = self.bound_plate(model_trace, args, kwargs)
        k = self.num_particles
        log_p, log_q, scale = importance_log_densities(model_trace, guide_trace, k, rank, plate)
        # the score is that of the density each draw came from: a site's scale (β, KL
        # warm-up, poutine.scale) and mask weigh its term of log w, not ∇ log q(h)
        per_datapoint = plate if weights_factor(model_trace, guide_trace, plate) else None
        score = sampling_log_density(guide_trace, k, rank, per_datapoint, log_q.shape[1])
        log_w = log_p - log_q
        lw = log_w.detach()
        bound = torch.logsumexp(lw, 0) - math.log(k)
        leave_one_out = _leave_one_out_bounds(lw)
        weights = torch.softmax(lw, 0)
        # scale (N/|batch| times any scale common to every site, divided out of log w)
        # multiplies each datapoint's bound, so it multiplies its gradient estimate too
        surrogate = (scale * ((bound - leave_one_out) * score + weights * log_w)).sum()
        value = -(scale * bound).sum()
        return -surrogate + (value + surrogate).detach()


def _leave_one_out_bounds(lw: torch.Tensor) -> torch.Tensor:
    """L̂_{−k} for each particle k of ``lw`` (``[K, N]``): the bound with l_k replaced by
    m_k, the mean of the other K − 1 log-weights.

    L̂_{−k} = log(Σ_{j≠k} exp(l_j) + exp(m_k)) − log K. The sum without l_k is
    log(exp(L) − exp(l_k)) = L + log1p(−exp(l_k − L)), L = log Σ_j exp(l_j), which is
    well-conditioned for every k but the largest (exp(l_k − L) ≤ 1/2 there); for the
    largest it is a log-sum-exp with that one entry left out. Memory is O(K·N), not the
    O(K²·N) of building the K replaced copies.
    """
    k = lw.shape[0]
    others_mean = (lw.sum(0, keepdim=True) - lw) / (k - 1)
    total = torch.logsumexp(lw, 0, keepdim=True)
    largest = torch.zeros_like(lw, dtype=torch.bool).scatter_(0, lw.argmax(0, keepdim=True), True)
    without_largest = torch.logsumexp(lw.masked_fill(largest, -math.inf), 0, keepdim=True)
    share = torch.exp(lw - total).masked_fill(largest, 0.0)
    without = torch.where(largest, without_largest, total + torch.log1p(-share))
    return torch.logaddexp(without, others_mean) - math.log(k)
