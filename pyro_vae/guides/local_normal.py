"""A non-amortized guide: one free diagonal Normal per datapoint of a fixed set.

    q(z_n) = N(μ_n, diag σ_n²),   n = 1..N,

the "local" mean-field family against which an amortized encoder is measured: the best
ELBO it reaches is the most any amortized Normal guide could reach (Cremer, Li &
Duvenaud 2018, "Inference suboptimality in variational autoencoders").
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from pyro_vae.plate_declaration import data_plate


class LocalNormal(PyroModule):
    """q(z_n) = N(μ_n, σ_n²) for the N rows of one fixed batch (site ``site``).

    Args:
        loc: ``[N, latent_dim]`` initial means; scale: ``[N, latent_dim]`` initial sds.
    """

    #: May be recorded without being asked (``pyro_vae.estimators.compiled.should_record``):
    #: no Python branching on tensor values; trace structure fixed by batch shape.
    recordable = True

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, site: str = "z") -> None:
        super().__init__(name="local_guide")
        if loc.shape != scale.shape or loc.dim() != 2:
            raise ValueError(
                f"loc, scale: shapes {tuple(loc.shape)} and {tuple(scale.shape)} "
                "are not the same [N, latent_dim]"
            )
        self.site = site
        self.loc = nn.Parameter(loc.detach().clone())
        self.log_scale = nn.Parameter(scale.detach().clamp(min=1e-6).log().clone())

    def encode(self, x: torch.Tensor) -> dist.Normal:
        self._check(x)
        return dist.Normal(self.loc, self.log_scale.exp())

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[0] != self.loc.shape[0]:
            raise ValueError(
                f"x: {x.shape[0]} rows, but this local guide holds "
                f"{self.loc.shape[0]} datapoints; it only fits the batch it was "
                "made for"
            )

    def forward(self, x: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        with data_plate(x, num_data):
            return pyro.sample(self.site, self.encode(x).to_event(1))
