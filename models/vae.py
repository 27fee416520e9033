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

import pyro.distributions as dist
import torch

from models.latent_decoder import LatentDecoderModel
from pyro_vae.guides import AmortizedNormal


class VAE(LatentDecoderModel):
    """p(z) p_θ(x | z) with a standard Normal prior and an MLP decoder.

    Args:
        x_dim: number of pixels D.
        latent_dim: size of z.
        hidden_dims: decoder hidden widths (the guide's encoder uses them reversed).
        likelihood: ``bernoulli``, ``gaussian`` or ``categorical``.
        levels: pixel levels L for ``categorical``.
        activation: hidden nonlinearity.
        arch: ``"mlp"``, or ``"conv"`` for convolutional decoder and guide encoder
            (:mod:`pyro_vae.convnets`; ``hidden_dims`` is then the MLP between the
            convolutions and z).
        image_shape: the images' ``(H, W)`` or ``(C, H, W)``, with C·H·W = ``x_dim``; needed
            by ``arch="conv"`` (``pyro-vae fit`` passes the data's).
        channels: the convolutions' widths (default ``(32, 64, 128)``), ``arch="conv"`` only.
    """

    #: May be recorded without being asked (``pyro_vae.estimators.compiled.should_record``):
    #: no Python branching on tensor values; trace structure fixed by batch shape.
    recordable = True

    def __init__(
        self,
        x_dim: int,
        latent_dim: int = 20,
        hidden_dims: Sequence[int] = (400,),
        likelihood: str = "bernoulli",
        levels: int | None = None,
        activation: str = "softplus",
        arch: str = "mlp",
        image_shape: tuple[int, ...] | None = None,
        channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__(
            x_dim,
            latent_dim,
            hidden_dims,
            likelihood,
            levels,
            activation,
            arch,
            image_shape,
            channels,
        )
        # The prior's mean: a buffer, so the prior lives on the model's device (moved by
        # .to()); not persistent, so checkpoints hold the same tensors as before.
        self.register_buffer("prior_loc", torch.zeros(latent_dim), persistent=False)

    def prior(self, batch_shape: tuple[int, ...] = ()) -> dist.TorchDistribution:
        """p(z) = N(0, I), with event shape ``[latent_dim]``."""
        zeros = self.prior_loc.new_zeros(*batch_shape, self.latent_dim)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def make_guide(self) -> AmortizedNormal:
        """The amortized Normal guide with the decoder's hidden widths reversed (and its
        convolutions, with ``arch="conv"``)."""
        return AmortizedNormal(
            self.x_dim,
            self.latent_dim,
            self.hidden_dims[::-1],
            self.activation,
            **self.network_options,
        )
