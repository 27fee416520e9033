"""The deterministic autoencoder of the lecture's §18.1, trained by the same SVI loop.

    z  = Enc(x)                 (a deterministic MLP code, simpler than x)
    z' = z + ε,  ε ~ N(0, s²I)  (the code corrupted by noise, during training)
    x̂  = argmax_x' Pr(x = x' | z')   (the decoder's likelihood, as in the VAE)

Written in Pyro syntax with ``x`` the only sample site, so with the empty guide
``Trace_ELBO`` is exactly the negative reconstruction log-likelihood
−log Pr(x | z'). It is not a generative model (nothing places a prior on z), so it has
no ELBO or log p(x) of its own: it is the non-probabilistic baseline the VAE improves on.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import torch
from pyro.nn import PyroModule
from torch import nn

from pyro_vae.checks import check_count
from pyro_vae.convnets import default_activation, encoder_trunk, likelihood_decoder
from pyro_vae.guides import EmptyGuide
from pyro_vae.likelihoods import make_likelihood
from pyro_vae.nn import layer_widths, mlp
from pyro_vae.plates import data_plate


class Autoencoder(PyroModule):
    """Enc, corrupt, decode, with a likelihood on the reconstruction.

    Args:
        x_dim: number of pixels D.
        latent_dim: size of the code z.
        hidden_dims: decoder hidden widths (the encoder uses them reversed).
        likelihood: one of :data:`pyro_vae.likelihoods.LIKELIHOODS` (``bernoulli``,
            ``gaussian``, ``categorical``, ``normal``, ``continuous-bernoulli``).
        levels: pixel levels L for ``categorical``.
        noise_std: standard deviation s of the corruption z' = z + ε in training mode.
        activation: hidden nonlinearity (default: softplus for an MLP, ELU for
            ``arch="conv"``; :func:`pyro_vae.convnets.default_activation`).
        arch: ``"mlp"``, or ``"conv"`` for a convolutional encoder and decoder
            (:mod:`pyro_vae.convnets`; ``hidden_dims`` is then the MLP between the
            convolutions and z).
        image_shape: the images' ``(H, W)`` or ``(C, H, W)``; needed by ``arch="conv"``.
        channels: the convolutions' widths (default ``(32, 64, 128)``), ``arch="conv"`` only.
    """

    #: May be recorded without being asked (``pyro_vae.estimators.compiled.should_record``):
    #: no Python branching on tensor values; trace structure fixed by batch shape.
    recordable = True

    generative = False

    def __init__(
        self,
        x_dim: int,
        latent_dim: int = 20,
        hidden_dims: Sequence[int] = (400,),
        likelihood: str = "bernoulli",
        levels: int | None = None,
        noise_std: float = 0.1,
        activation: str | None = None,
        arch: str = "mlp",
        image_shape: tuple[int, ...] | None = None,
        channels: Sequence[int] | None = None,
    ) -> None:
        activation = default_activation(arch, activation)
        super().__init__(name="model")
        if noise_std < 0:
            raise ValueError(f"noise_std: {noise_std} is negative; expected a standard deviation")
        check_count("latent_dim", latent_dim, 1)  # tester CM: 0 trained a code of no units
        self.x_dim, self.latent_dim, self.noise_std = x_dim, latent_dim, noise_std
        hidden_dims = layer_widths(hidden_dims)
        self.likelihood = make_likelihood(likelihood, x_dim, levels)
        self.arch = arch
        if arch == "mlp":
            self.encoder = mlp(x_dim, hidden_dims[::-1], latent_dim, activation)
        else:
            trunk, width = encoder_trunk(
                x_dim, hidden_dims[::-1], activation, arch, image_shape, channels
            )
            self.encoder = nn.Sequential(trunk, nn.Linear(width, latent_dim))
        self.decoder = likelihood_decoder(
            latent_dim, hidden_dims, self.likelihood, activation, arch, image_shape, channels
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z = Enc(x)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """E[x | z]: the mean reconstruction from a code (data units)."""
        return self.likelihood.mean(self.decoder(z))

    def forward(self, x: torch.Tensor, num_data: int | None = None) -> None:
        z = self.encode(x)
        if self.training and self.noise_std > 0:
            z = z + self.noise_std * torch.randn_like(z)
        with data_plate(x, num_data):
            pyro.sample("x", self.likelihood.distribution(self.decoder(z)), obs=x)

    def make_guide(self) -> EmptyGuide:
        """Every site of this model is observed, so its guide samples nothing."""
        return EmptyGuide()
