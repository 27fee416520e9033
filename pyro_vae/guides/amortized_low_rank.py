"""The amortized low-rank multivariate Normal guide.

    q_λ(z | x) = N(z; μ_λ(x), D_λ(x) + V_λ(x) V_λ(x)ᵀ)

with D_λ(x) = diag(σ_λ(x)²) and V_λ(x) a ``latent_dim`` x ``rank`` factor: the diagonal
Gaussian of :class:`~pyro_vae.guides.AmortizedNormal` plus ``rank`` directions of
correlation between the latent coordinates, all read off one encoder trunk φ(x; λ) by
linear heads (Rezende, Mohamed & Wierstra 2014, sec. 4.3, the rank-one case). Pyro's
``LowRankMultivariateNormal`` holds it: samples are reparameterized,
z = μ + σ ⊙ ε₁ + V ε₂, and the density costs O(rank² · latent_dim) through the Woodbury
identity, never forming the dense covariance.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from pyro_vae.checks import check_count
from pyro_vae.convnets import default_activation
from pyro_vae.guides.gaussian_encoder import add_gaussian_encoder
from pyro_vae.plate_declaration import data_plate


class AmortizedLowRankNormal(PyroModule):
    """q_λ(z | x) = N(μ_λ(x), diag σ_λ(x)² + V_λ(x) V_λ(x)ᵀ) for the latent site ``site``.

    Args:
        x_dim: number of input features D.
        latent_dim: size of z.
        hidden_dims: widths of the encoder trunk φ.
        activation: nonlinearity of the trunk (default: softplus for an MLP, ELU for
            ``arch="conv"``; :func:`pyro_vae.convnets.default_activation`).
        site: name of the latent sample site in the model.
        rank: columns of the factor V (default 2); a rank above ``latent_dim`` is clipped to
            ``latent_dim``, which already spans every covariance.
        arch: ``"mlp"`` (the trunk above) or ``"conv"``: stride-2 convolutions of widths
            ``channels`` on the ``image_shape`` images, then the ``hidden_dims`` MLP
            (:func:`pyro_vae.convnets.encoder_trunk`).
        image_shape: the images' ``(H, W)`` or ``(C, H, W)``; needed by ``arch="conv"``.
        channels: the convolutions' widths (default ``(32, 64, 128)``).

    Raises:
        ValueError: ``rank`` is not a positive integer.
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
        rank: int = 2,
        arch: str = "mlp",
        image_shape: tuple[int, ...] | None = None,
        channels: Sequence[int] | None = None,
    ) -> None:
        activation = default_activation(arch, activation)
        check_count("rank", rank, 1, "; expected the number of columns of the factor V")
        super().__init__(name="guide")
        self.rank = min(int(rank), latent_dim)
        width = add_gaussian_encoder(
            self, x_dim, latent_dim, site, hidden_dims, activation, arch, image_shape, channels
        )
        self.factor_head = nn.Linear(width, latent_dim * self.rank)

    def encode(self, x: torch.Tensor) -> dist.LowRankMultivariateNormal:
        """q_λ(z | x) for each row of ``x``: batch shape ``[N]``, event shape
        ``[latent_dim]``; ``mean`` is μ_λ(x), ``covariance_matrix`` D + VVᵀ."""
        h = self.trunk(x)
        factor = self.factor_head(h).reshape(*h.shape[:-1], self.latent_dim, self.rank)
        variance = torch.exp(2 * self.log_scale_head(h))
        return dist.LowRankMultivariateNormal(self.loc_head(h), factor, variance)

    def forward(self, x: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        with data_plate(x, num_data):
            return pyro.sample(self.site, self.encode(x))
