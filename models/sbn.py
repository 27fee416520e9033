"""A sigmoid belief network: a VAE with binary latents (Neal 1992; Mnih & Gregor 2014).

    z_j ~ Bernoulli(sigmoid(a_j)),  j = 1..J       (learned prior logits a)
    x | z ~ Bernoulli(sigmoid(f_θ(z)))              (f_θ linear by default: the classic SBN)

z is discrete, so no reparameterization exists: its guide
(:class:`pyro_vae.guides.AmortizedBernoulli`) is trained by score-function gradients
(``pyro_vae.estimators.get("score", ...)`` or Pyro's ``TraceGraph_ELBO``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from pyro_vae.guides import AmortizedBernoulli
from pyro_vae.likelihoods import make_likelihood
from pyro_vae.nn import mlp
from pyro_vae.plates import data_plate


class SBN(PyroModule):
    """p(z) p_θ(x | z) with J Bernoulli latents and a Bernoulli likelihood.

    Args:
        x_dim: number of pixels D.
        latent_dim: number of binary latents J.
        hidden_dims: decoder hidden widths (``()``: linear, the classic SBN).
        likelihood: must be ``bernoulli`` (kept as an argument for the CLI's contract).
        activation: hidden nonlinearity of decoder and guide.
        guide_baseline: ``infer["baseline"]`` options for the guide's site (TraceGraph_ELBO).
    """

    generative = True

    def __init__(
        self,
        x_dim: int,
        latent_dim: int = 200,
        hidden_dims: Sequence[int] = (),
        likelihood: str = "bernoulli",
        levels: int | None = None,
        activation: str = "tanh",
        guide_baseline: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(name="model")
        if likelihood != "bernoulli":
            raise ValueError(
                f"likelihood: the SBN models binary pixels; got {likelihood!r}, "
                "expected 'bernoulli'"
            )
        if latent_dim < 1:
            raise ValueError(f"latent_dim: {latent_dim} is not a positive integer")
        self.x_dim, self.latent_dim = x_dim, latent_dim
        self.hidden_dims, self.activation = tuple(int(h) for h in hidden_dims), activation
        self.guide_baseline = guide_baseline
        self.likelihood = make_likelihood("bernoulli", x_dim)
        self.prior_logits = nn.Parameter(torch.zeros(latent_dim))
        self.decoder = mlp(latent_dim, self.hidden_dims, x_dim, activation)

    def prior(self, batch_shape: tuple[int, ...] = ()) -> dist.TorchDistribution:
        """p(z): independent Bernoullis with learned logits, event shape ``[J]``."""
        return dist.Bernoulli(logits=self.prior_logits.expand(*batch_shape, -1)).to_event(1)

    def forward(self, x: torch.Tensor, num_data: int | None = None) -> None:
        with data_plate(x, num_data):
            z = pyro.sample("z", self.prior((x.shape[0],)))
            pyro.sample("x", self.likelihood.distribution(self.decoder(z)), obs=x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """E[x | z] (z may be fractional, e.g. the guide's mean q(z_j = 1 | x))."""
        return self.likelihood.mean(self.decoder(z))

    def generate(self, num: int) -> torch.Tensor:
        """Mean images E[x | z] of ``num`` codes drawn from the prior."""
        return self.decode(self.prior((num,)).sample())

    def make_guide(self) -> AmortizedBernoulli:
        """A logistic-regression (or MLP) recognition network q(z | x)."""
        return AmortizedBernoulli(
            self.x_dim,
            self.latent_dim,
            self.hidden_dims[::-1],
            self.activation,
            baseline=self.guide_baseline,
        )
