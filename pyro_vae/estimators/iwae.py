"""The importance-weighted bound (Burda, Grosse & Salakhutdinov 2015) as a training objective.

For each datapoint x_n and K samples z_{n,k} ~ q(z | x_n),

    L_K(x_n) = log (1/K) Σ_k p(x_n, z_{n,k}) / q(z_{n,k} | x_n)  ≤ log p(x_n),

with L_1 the ELBO and L_K increasing in K. The log-sum-exp is taken per datapoint of the
``"data"`` plate; a minibatch's bounds are summed and scaled by N/|batch|. A model with no
data plate (only global latents) is one datapoint: the bound is on log p(X) jointly. (Pyro's
``RenyiELBO(alpha=0)`` instead takes one log-sum-exp over the whole batch's weight, a much
looser bound on log p(X) once the batch is larger than one.) Gradients are pathwise, so
every guide site must be reparameterizable.
"""

from __future__ import annotations

import math

import torch
from pyro.infer.enum import get_importance_trace

from pyro_vae.estimators.base import SurrogateELBO
from pyro_vae.plates import DATA_PLATE
from pyro_vae.pointwise import data_plate_scale, particle_rank, per_datapoint_log_density


class IWAELBO(SurrogateELBO):
    """−Σ_n L_K(x_n), the negative importance-weighted bound with K = ``num_particles``."""

    def __init__(
        self,
        num_particles: int = 5,
        max_plate_nesting: float = float("inf"),
        strict_enumeration_warning: bool = True,
    ) -> None:
        super().__init__(num_particles, max_plate_nesting, strict_enumeration_warning)

    def _get_trace(self, model, guide, args, kwargs):
        return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        model_trace, guide_trace = next(self._get_traces(model, guide, args, kwargs))
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and not site["fn"].has_rsample:
                raise ValueError(
                    f"guide site {name!r} ({_base_name(site['fn'])}) is not reparameterizable; "
                    "the iwae estimator needs pathwise gradients. Use the score estimator for "
                    "discrete latents."
                )
        rank = particle_rank(self.max_plate_nesting, self.num_particles)
        batch = _data_plate_size(model_trace)
        if batch is None:
            log_w = _joint_log_density(model_trace, rank) - _joint_log_density(guide_trace, rank)
        else:
            log_w = per_datapoint_log_density(
                model_trace, self.num_particles, batch, rank, relative_scale=True
            ) - per_datapoint_log_density(
                guide_trace, self.num_particles, batch, rank, relative_scale=True
            )
        bound = torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)
        return -data_plate_scale(model_trace) * bound.sum()


def _base_name(fn) -> str:
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return type(fn).__name__


def _data_plate_size(trace) -> int | None:
    for site in trace.nodes.values():
        for frame in site.get("cond_indep_stack", ()):
            if frame.name == DATA_PLATE:
                return int(frame.size)
    return None


def _joint_log_density(trace, rank: int) -> torch.Tensor:
    """Σ of every site's (scaled) log-density per particle: ``[K, 1]``."""
    total = 0.0
    for site in trace.nodes.values():
        if site["type"] == "sample":
            log_p = site["log_prob"]
            log_p = log_p.reshape((1,) * (rank - log_p.dim()) + tuple(log_p.shape))
            total = total + log_p.reshape(log_p.shape[0], -1).sum(-1, keepdim=True)
    return total
