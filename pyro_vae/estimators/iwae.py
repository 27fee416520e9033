"""The importance-weighted bound (Burda, Grosse & Salakhutdinov 2015) as a training objective.

For each datapoint x_n and K samples z_{n,k} ~ q(z | x_n),

    L_K(x_n) = log (1/K) Σ_k p(x_n, z_{n,k}) / q(z_{n,k} | x_n)  ≤ log p(x_n),

with L_1 the ELBO and L_K increasing in K. The log-sum-exp is taken per datapoint of the
per-datapoint plate (:func:`pyro_vae.plates.find_data_plate`) when every site lies in it;
a minibatch's bounds are summed and scaled by N/|batch|. A model with global latents, or
with no per-datapoint plate, is one datapoint: the bound is on log p(X) jointly, which a
minibatch cannot estimate, so that case is refused when the plate is subsampled. (Pyro's
``RenyiELBO(alpha=0)`` instead takes one log-sum-exp over the whole batch's weight, a much
looser bound on log p(X) once the batch is larger than one.) Gradients are pathwise, so
every guide site must be reparameterizable.
"""

from __future__ import annotations

import math

import torch
from pyro.infer.enum import get_importance_trace

from pyro_vae.estimators.base import SurrogateELBO
from pyro_vae.estimators.capabilities import Capabilities
from pyro_vae.plates import batch_rows
from pyro_vae.pointwise import importance_log_densities
from pyro_vae.traces import sample_sites


class IWAELBO(SurrogateELBO):
    """−Σ_n L_K(x_n), the negative importance-weighted bound with K = ``num_particles``.

    Args:
        num_particles: K.
        max_plate_nesting, strict_enumeration_warning: as in Pyro's ELBOs.
        vectorize_particles: ``True``, ``False`` (a loop over particles) or ``None`` (auto);
            see :class:`~pyro_vae.estimators.base.SurrogateELBO`.
        data_plate: the per-datapoint plate's name (found by
            :func:`pyro_vae.plates.find_data_plate` when ``None``).

    Raises:
        ValueError: a guide site is not reparameterizable.
        pyro_vae.plates.DataPlateError: global latents in a subsampled model, where the
            K-sample bound has no unbiased minibatch estimate.
    """

    capabilities = Capabilities(
        keeps_state=False, needs_reparameterized=True, per_datapoint=True, recordable=True
    )

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
            vectorize_particles=vectorize_particles,
            data_plate=data_plate,
        )

    def _get_trace(self, model, guide, args, kwargs):
        return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        model_trace, guide_trace, rank = self.particle_traces(model, guide, args, kwargs)
        for name, site in sample_sites(guide_trace).items():
            if not site["fn"].has_rsample:
                raise ValueError(
                    f"guide site {name!r} ({_base_name(site['fn'])}) is not reparameterizable; "
                    "the iwae estimator needs pathwise gradients. Use the score estimator for "
                    "discrete latents."
                )
        plate = self.per_datapoint_plate(model_trace, args, kwargs)
        batch = batch_rows(args, kwargs)
        log_p, log_q, scale = importance_log_densities(
            model_trace, guide_trace, self.num_particles, rank, plate, batch
        )
        bound = torch.logsumexp(log_p - log_q, dim=0) - math.log(self.num_particles)
        return -scale * bound.sum()


def _base_name(fn) -> str:
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return type(fn).__name__
