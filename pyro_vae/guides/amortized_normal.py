"""The amortized diagonal-Normal guide of the variational autoencoder.

    q_λ(z | x) = N(z; w¹ φ(x; λ), diag(exp(w² φ(x; λ)))²)

A shared encoder trunk φ (an MLP) feeds two linear heads: w¹ gives the mean and w² the
log standard deviation. This is the lecture's q_λ(z) = N(w¹φ₁(x;λ), w²φ₂(x;λ)) with
φ₁ = φ₂ sharing their hidden layers (Kingma & Welling 2013, "Auto-Encoding Variational
Bayes", appendix C.2). Samples are reparameterized, z = μ + σ ⊙ ε with ε ~ N(0, I), so
``Trace_ELBO`` gives pathwise gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pyro_vae.convnets import default_activation
from pyro_vae.guides.gaussian_encoder import add_gaussian_encoder
from pyro_vae.plate_declaration import data_plate


class AmortizedNormal(PyroModule):
    """q_λ(z | x) = N(μ_λ(x), diag σ_λ(x)²) for the latent site ``site``.

    Args:
        x_dim: number of input features D.
        latent_dim: size of z.
        hidden_dims: widths of the encoder trunk φ.
        activation: nonlinearity of the trunk (default: softplus for an MLP, ELU for
            ``arch="conv"``; :func:`pyro_vae.convnets.default_activation`).
        site: name of the latent sample site in the model.
        arch: ``"mlp"`` (the trunk above) or ``"conv"``: stride-2 convolutions of widths
            ``channels`` on the ``image_shape`` images, then the ``hidden_dims`` MLP
            (:func:`pyro_vae.convnets.encoder_trunk`).
        image_shape: the images' ``(H, W)`` or ``(C, H, W)``; needed by ``arch="conv"``.
        channels: the convolutions' widths (default ``(32, 64, 128)``).

    Raises:
        ValueError: an unknown ``arch``; with ``"conv"``, a missing or wrong
            ``image_shape`` or more convolutions than the images take
            (:mod:`pyro_vae.convnets`).
    """

    #: May be recorded without being asked (``pyro_vae.estimators.compiled.should_record``):
    #: no Python branching on tensor values; trace structure fixed by batch shape.
    recordable = True

    def __init__(
        self,
        x_dim: int,
        latent_dim: int,
        hidden_dims: Sequence[int] = (400,),
        activation: str | None = None,
        site: str = "z",
        arch: str = "mlp",
        image_shape: tuple[int, ...] | None = None,
        channels: Sequence[int] | None = None,
    ) -> None:
        activation = default_activation(arch, activation)
        super().__init__(name="guide")
        add_gaussian_encoder(
            self, x_dim, latent_dim, site, hidden_dims, activation, arch, image_shape, channels
        )

    def encode(self, x: torch.Tensor) -> dist.Normal:
        """q_λ(z | x) for each row of ``x``: a Normal with batch shape ``[N, latent_dim]``."""
        h = self.trunk(x)
        return dist.Normal(self.loc_head(h), torch.exp(self.log_scale_head(h)))

    def forward(self, x: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        with data_plate(x, num_data):
            return pyro.sample(self.site, self.encode(x).to_event(1))
