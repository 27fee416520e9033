"""A non-amortized guide: one free low-rank multivariate Normal per datapoint of a fixed set.

    q(z_n) = N(μ_n, diag σ_n² + V_n V_nᵀ),   n = 1..N,

the local counterpart of :class:`~pyro_vae.guides.AmortizedLowRankNormal`: the best ELBO
it reaches on each datapoint is the most that encoder's family could reach there (Cremer,
Li & Duvenaud 2018).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from pyro_vae.guides.local_rows import (
    HeldRows,
    check_initial_values,
    given_rows,
    initial_log_scale,
    rows_or_all,
)
from pyro_vae.plate_declaration import data_plate


class LocalLowRankNormal(HeldRows, PyroModule):
    """q(z_n) = N(μ_n, diag σ_n² + V_n V_nᵀ) for the N rows of one fixed batch.

    Args:
        loc: ``[N, latent_dim]`` initial means μ.
        scale: ``[N, latent_dim]`` initial standard deviations σ of the diagonal part.
        cov_factor: ``[N, latent_dim, rank]`` initial factors V.
        site: name of the latent sample site in the model.

    Raises:
        ValueError: the shapes do not agree as above, or ``scale`` has a negative or
            non-finite element (the others, a non-finite one).
        TypeError: an initial value that is not a tensor.
    """

    #: May be recorded without being asked (``pyro_vae.estimators.compiled.should_record``):
    #: no Python branching on tensor values; trace structure fixed by batch shape (the
    #: recorded step is tested to equal the eager one).
    recordable = True

    def __init__(
        self, loc: torch.Tensor, scale: torch.Tensor, cov_factor: torch.Tensor, site: str = "z"
    ) -> None:
        super().__init__(name="local_guide")
        check_initial_values(loc=loc, scale=scale, cov_factor=cov_factor)
        if (
            loc.dim() != 2
            or scale.shape != loc.shape
            or cov_factor.shape[:-1] != loc.shape
            or cov_factor.shape[-1] == 0  # tester CN: rank 0, an IndexError in log_prob
        ):
            raise ValueError(
                f"loc, scale, cov_factor: shapes {tuple(loc.shape)}, {tuple(scale.shape)} and "
                f"{tuple(cov_factor.shape)}; expected [N, latent_dim], [N, latent_dim] and "
                "[N, latent_dim, rank] with rank >= 1"
            )
        self.site = site
        self.loc = nn.Parameter(loc.detach().clone())
        self.log_scale = nn.Parameter(initial_log_scale(scale))
        self.cov_factor = nn.Parameter(cov_factor.detach().clone())

    def encode(
        self, x: torch.Tensor, rows: torch.Tensor | None = None
    ) -> dist.LowRankMultivariateNormal:
        """The N low-rank Normals: batch shape ``[N]``, event shape ``[latent_dim]``; or
        those of the ``rows`` among them (:mod:`pyro_vae.guides.local_rows`).

        Raises:
            ValueError: ``x`` does not have the N rows this guide was made for.
        """
        rows = rows_or_all(x, rows, self.num_datapoints)
        return dist.LowRankMultivariateNormal(
            self.loc[rows], self.cov_factor[rows], torch.exp(2 * self.log_scale[rows])
        )

    def forward(self, x: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        with data_plate(x, num_data) as rows:
            return pyro.sample(self.site, self.encode(x, given_rows(rows, self.num_datapoints)))
