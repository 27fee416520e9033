"""The variational autoencoder (Kingma & Welling 2013; Rush, CS281 lecture 18.3).

Generative model, for each datapoint n of a dataset of N:

    z_n ~ N(0, I)                      (latent code, ``latent_dim``)
    x_n | z_n ~ p_θ(x | z_n)           (likelihood decoded by an MLP: Bernoulli, Gaussian,
                                        or the lecture's softmax over pixel levels)

The amortized guide q_λ(z | x) = N(μ_λ(x), σ_λ(x)) is a separate object
(:class:`pyro_vae.guides.AmortizedNormal`, from :meth:`VAE.make_guide`), so guides and
estimators can be swapped without touching the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pyro_vae.guides import AmortizedNormal
from pyro_vae.likelihoods import make_likelihood
from pyro_vae.nn import mlp
from pyro_vae.plates import data_plate


class VAE(PyroModule):
    """p(z) p_θ(x | z) with a standard Normal prior and an MLP decoder.

    Args:
        x_dim: number of pixels D.
        latent_dim: size of z.
        hidden_dims: decoder hidden widths (the guide's encoder uses them reversed).
        likelihood: ``bernoulli``, ``gaussian`` or ``categorical``.
        levels: pixel levels L for ``categorical``.
        activation: hidden nonlinearity.
    """

    generative = True

    def __init__(
        self,
        x_dim: int,
        latent_dim: int = 20,
        hidden_dims: Sequence[int] = (400,),
        likelihood: str = "bernoulli",
        levels: int | None = None,
        activation: str = "softplus",
    ) -> None:
        super().__init__(name="model")
        if latent_dim < 1:
            raise ValueError(f"latent_dim: {latent_dim} is not a positive integer")
        self.x_dim, self.latent_dim = x_dim, latent_dim
        self.hidden_dims, self.activation = tuple(int(h) for h in hidden_dims), activation
        self.likelihood = make_likelihood(likelihood, x_dim, levels)
        self.decoder = mlp(latent_dim, self.hidden_dims, self.likelihood.out_features, activation)

    def prior(self, batch_shape: torch.Size | tuple[int, ...] = ()) -> dist.TorchDistribution:
        """p(z) = N(0, I), with event shape ``[latent_dim]``."""
        zeros = torch.zeros(*batch_shape, self.latent_dim)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def forward(self, x: torch.Tensor, num_data: int | None = None) -> None:
        with data_plate(x, num_data):
            z = pyro.sample("z", self.prior((x.shape[0],)))
            pyro.sample("x", self.likelihood.distribution(self.decoder(z)), obs=x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """E[x | z]: the decoder's mean image for each code (data units)."""
        return self.likelihood.mean(self.decoder(z))

    def generate(self, num: int) -> torch.Tensor:
        """Mean images E[x | z] of ``num`` codes drawn from the prior."""
        return self.decode(self.prior((num,)).sample())

    def make_guide(self) -> AmortizedNormal:
        """The amortized Normal guide with the decoder's hidden widths reversed."""
        return AmortizedNormal(self.x_dim, self.latent_dim, self.hidden_dims[::-1], self.activation)
