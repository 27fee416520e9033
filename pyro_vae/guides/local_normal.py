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

from pyro_vae.guides.local_rows import (
    HeldRows,
    check_initial_values,
    given_rows,
    initial_log_scale,
    rows_or_all,
)
from pyro_vae.plate_declaration import data_plate


class LocalNormal(HeldRows, PyroModule):
    """q(z_n) = N(μ_n, σ_n²) for the N rows of one fixed batch (site ``site``).

    Called on those N rows it gives every row its own q. Called as the evaluators and
    ``fit`` call a guide (:class:`pyro_vae.minibatch.Minibatched`, which gives the data
    plate its full size N and the batch's rows), the rows it is given are those among the
    N, so it can be scored in chunks or on some of its rows (``rows=``: tester J);
    ``num_datapoints`` says N.

    Args:
        loc: ``[N, latent_dim]`` initial means; scale: ``[N, latent_dim]`` initial sds.

    Raises:
        ValueError: ``loc`` and ``scale`` are not the same ``[N, latent_dim]``, or ``scale``
            has a negative or non-finite element (:func:`~pyro_vae.guides.local_rows.
            initial_log_scale`), or ``loc`` a non-finite one.
        TypeError: ``loc`` or ``scale`` is not a tensor.
        ValueError (when called): another number of rows than N in a plain call, or a data
            plate of another full size than N.
    """

    #: May be recorded without being asked (``pyro_vae.estimators.compiled.should_record``):
    #: no Python branching on tensor values; trace structure fixed by batch shape.
    recordable = True

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, site: str = "z") -> None:
        super().__init__(name="local_guide")
        check_initial_values(loc=loc, scale=scale)
        if loc.shape != scale.shape or loc.dim() != 2:
            raise ValueError(
                f"loc, scale: shapes {tuple(loc.shape)} and {tuple(scale.shape)} "
                "are not the same [N, latent_dim]"
            )
        self.site = site
        self.loc = nn.Parameter(loc.detach().clone())
        self.log_scale = nn.Parameter(initial_log_scale(scale))

    def encode(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> dist.Normal:
        """q of ``x``'s rows: all N in order, or the ``rows`` among them."""
        rows = rows_or_all(x, rows, self.num_datapoints)
        return dist.Normal(self.loc[rows], self.log_scale[rows].exp())

    def forward(self, x: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        with data_plate(x, num_data) as rows:
            q = self.encode(x, given_rows(rows, self.num_datapoints))
            return pyro.sample(self.site, q.to_event(1))
