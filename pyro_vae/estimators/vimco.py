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
datapoint of the ``"data"`` plate is its own bound; the minibatch sum is scaled by N/|batch|.
"""

from __future__ import annotations

import math

import torch
from pyro.infer.enum import get_importance_trace

from pyro_vae.estimators.base import SurrogateELBO
from pyro_vae.estimators.iwae import _data_plate_size
from pyro_vae.estimators.score_function import _DetachSamples
from pyro_vae.pointwise import data_plate_scale, particle_rank, per_datapoint_log_density


class VIMCO(SurrogateELBO):
    """−Σ_n L̂_K(x_n) with VIMCO's leave-one-out score-function gradient; K ≥ 2."""

    def __init__(
        self,
        num_particles: int = 5,
        max_plate_nesting: float = float("inf"),
        strict_enumeration_warning: bool = True,
    ) -> None:
        super().__init__(
            num_particles,
            max_plate_nesting,
            strict_enumeration_warning,
            min_particles=2,
            too_few="is too few; VIMCO's leave-one-out baseline needs at least 2 samples",
        )

    def _get_trace(self, model, guide, args, kwargs):
        return get_importance_trace(
            "flat", self.max_plate_nesting, model, _DetachSamples()(guide), args, kwargs
        )

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """A surrogate whose value is −Σ_n L̂(x_n) and whose gradient is VIMCO's estimate."""
        model_trace, guide_trace = next(self._get_traces(model, guide, args, kwargs))
        batch = _data_plate_size(model_trace)
        if batch is None:
            raise ValueError(
                "the model has no 'data' plate; VIMCO bounds log p(x_n) per "
                "datapoint of pyro_vae.plates.data_plate(x)"
            )
        k, rank = self.num_particles, particle_rank(self.max_plate_nesting, self.num_particles)
        log_q = per_datapoint_log_density(guide_trace, k, batch, rank, relative_scale=True)
        log_w = per_datapoint_log_density(model_trace, k, batch, rank, relative_scale=True) - log_q
        lw = log_w.detach()
        bound = torch.logsumexp(lw, 0) - math.log(k)
        others_mean = (lw.sum(0, keepdim=True) - lw) / (k - 1)
        # replaced[i, j] = l_j, except l_i -> mean of the others; log-sum-exp over j.
        eye = torch.eye(k, dtype=torch.bool).unsqueeze(-1)
        replaced = torch.where(eye, others_mean.unsqueeze(1), lw.unsqueeze(0))
        leave_one_out = torch.logsumexp(replaced, dim=1) - math.log(k)
        weights = torch.softmax(lw, 0)
        surrogate = ((bound - leave_one_out) * log_q + weights * log_w).sum()
        scale = data_plate_scale(model_trace)
        value = -scale * bound.sum()
        return -scale * surrogate + (value + scale * surrogate).detach()
