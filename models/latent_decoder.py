"""What the VAE and the sigmoid belief network share: a prior over codes and a decoder.

    z_n ~ p(z),   x_n | z_n ~ p_θ(x | decoder(z_n))   for each datapoint of the data plate.

Subclasses say what p(z) is (:meth:`prior`) and which guide fits it (``make_guide``).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pyro_vae.convnets import check_architecture, likelihood_decoder
from pyro_vae.likelihoods import make_likelihood
from pyro_vae.nn import layer_widths
from pyro_vae.plates import data_plate


class LatentDecoderModel(PyroModule):
    """p(z) p_θ(x | z) with an MLP decoder ``latent_dim -> hidden_dims -> likelihood``, or
    with ``arch="conv"`` a convolutional one (:class:`pyro_vae.convnets.ConvDecoder`: the
    ``hidden_dims`` MLP, then transposed convolutions of widths ``channels`` reversed, to
    the likelihood's parameters of each pixel of ``image_shape``).
    """

    generative = True
    #: May be recorded without being asked (``pyro_vae.estimators.compiled.should_record``):
    #: no Python branching on tensor values; trace structure fixed by batch shape. Not
    #: inherited: each subclass declares its own.
    recordable = True

    def __init__(
        self,
        x_dim: int,
        latent_dim: int,
        hidden_dims: Sequence[int],
        likelihood: str,
        levels: int | None,
        activation: str,
        arch: str = "mlp",
        image_shape: tuple[int, ...] | None = None,
        channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__(name="model")
        if latent_dim < 1:
            raise ValueError(f"latent_dim: {latent_dim} is not a positive integer")
        # the images' pixels against x_dim now, as CVAE and M2 check them (tester CV: a
        # VAE of 64 values on 4x4 images was refused only at its guide's first call)
        check_architecture(arch, x_dim, image_shape, channels)
        self.x_dim, self.latent_dim = x_dim, latent_dim
        self.hidden_dims, self.activation = layer_widths(hidden_dims), activation
        self.likelihood = make_likelihood(likelihood, x_dim, levels)
        self.arch, self.image_shape = arch, None if image_shape is None else tuple(image_shape)
        self.channels = None if channels is None else tuple(int(c) for c in channels)
        self.decoder = likelihood_decoder(
            latent_dim, self.hidden_dims, self.likelihood, activation, arch, self.image_shape,
            self.channels,
        )  # fmt: skip

    @property
    def network_options(self) -> dict:
        """``arch``, ``image_shape`` and ``channels``: what a guide's encoder needs to be
        built like this decoder (the MLP's: just ``arch``)."""
        if self.arch == "mlp":
            return {"arch": "mlp"}
        return {"arch": self.arch, "image_shape": self.image_shape, "channels": self.channels}

    def prior(self, batch_shape: tuple[int, ...] = ()) -> dist.TorchDistribution:
        """p(z), with event shape ``[latent_dim]``."""
        raise NotImplementedError

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
