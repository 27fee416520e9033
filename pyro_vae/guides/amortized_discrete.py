"""Amortized guides over discrete latent vectors, for models where pathwise gradients do not
exist (sigmoid belief networks, categorical VAEs) and REINFORCE is the way through.

    Bernoulli:    q_λ(z | x) = Π_j Bernoulli(z_j; sigmoid(f_λ(x)_j)),       z ∈ {0, 1}^J
    Categorical:  q_λ(z | x) = Π_j Categorical(z_j; softmax(f_λ(x)_{j,·})), z ∈ {0..C−1}^J

f_λ is an MLP (``hidden_dims=()``: a linear map, as in Mnih & Gregor 2014's SBN guide).
A ``baseline`` dict is passed to the site's ``infer`` so Pyro's ``TraceGraph_ELBO`` can use
its own baselines (e.g. ``{"use_decaying_avg_baseline": True}``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pyro_vae.guides.gaussian_encoder import check_sizes
from pyro_vae.nn import layer_widths, mlp
from pyro_vae.plate_declaration import data_plate


class _AmortizedDiscrete(PyroModule):
    """Samples ``site`` from ``encode(x)`` in the data plate, with optional baseline options."""

    def encode(self, x: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        with data_plate(x, num_data):
            return pyro.sample(
                self.site,
                self.encode(x).to_event(1),
                infer={"baseline": self.baseline} if self.baseline else {},
            )


class AmortizedBernoulli(_AmortizedDiscrete):
    """q_λ(z | x) over J binary latents (site ``site``)."""

    #: May be recorded without being asked (``pyro_vae.estimators.compiled.should_record``):
    #: no Python branching on tensor values; trace structure fixed by batch shape.
    recordable = True

    def __init__(
        self,
        x_dim: int,
        latent_dim: int,
        hidden_dims: Sequence[int] = (),
        activation: str = "tanh",
        site: str = "z",
        baseline: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(name="guide")
        check_sizes(x_dim, latent_dim)  # tester CN: latent_dim 0 drew an empty z; FK: x_dim 0
        self.x_dim, self.latent_dim, self.site = x_dim, latent_dim, site
        self.baseline = dict(baseline or {})
        self.net = mlp(x_dim, layer_widths(hidden_dims), latent_dim, activation)

    def encode(self, x: torch.Tensor) -> dist.Bernoulli:
        """q_λ(z | x): independent Bernoullis with batch shape ``[N, J]``."""
        return dist.Bernoulli(logits=self.net(x))


class AmortizedCategorical(_AmortizedDiscrete):
    """q_λ(z | x) over J categorical latents with C classes each (site ``site``)."""

    #: May be recorded without being asked (``pyro_vae.estimators.compiled.should_record``):
    #: no Python branching on tensor values; trace structure fixed by batch shape.
    recordable = True

    def __init__(
        self,
        x_dim: int,
        latent_dim: int,
        num_categories: int,
        hidden_dims: Sequence[int] = (),
        activation: str = "tanh",
        site: str = "z",
        baseline: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(name="guide")
        check_sizes(x_dim, latent_dim)  # tester CN: latent_dim 0 failed in a reshape
        if num_categories < 2:
            raise ValueError(f"num_categories: {num_categories} is fewer than 2")
        self.x_dim, self.latent_dim, self.site = x_dim, latent_dim, site
        self.num_categories = num_categories
        self.baseline = dict(baseline or {})
        self.net = mlp(x_dim, layer_widths(hidden_dims), latent_dim * num_categories, activation)

    def encode(self, x: torch.Tensor) -> dist.Categorical:
        """q_λ(z | x): independent Categoricals with batch shape ``[N, J]``."""
        logits = self.net(x).reshape(*x.shape[:-1], self.latent_dim, self.num_categories)
        return dist.Categorical(logits=logits)
