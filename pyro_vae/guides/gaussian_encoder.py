"""The encoder the amortized continuous guides share: a trunk φ(x; λ) and two linear heads
w¹, w² for the mean μ and log standard deviation log σ (the lecture's
q_λ(z) = N(w¹φ₁(x;λ), w²φ₂(x;λ)) with φ₁ = φ₂). The Normal, low-rank and flow guides
each add what their family needs on top (a factor head, flow steps).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from pyro_vae.checks import check_count
from pyro_vae.convnets import encoder_trunk


def check_sizes(x_dim, latent_dim) -> None:
    """Refuse an ``x_dim`` or ``latent_dim`` that is not a positive integer, before any
    default is derived from them (tester FI: ``latent_dim=0`` built a guide that drew an
    empty z, or, in a flow, was refused as ``flow_hidden_dims: 0``, an argument not given).

    Raises:
        ValueError: naming the argument and the value."""
    check_count("x_dim", x_dim, 1)
    check_count("latent_dim", latent_dim, 1)


def add_gaussian_encoder(
    guide: nn.Module,
    x_dim: int,
    latent_dim: int,
    site: str,
    hidden_dims: Sequence[int],
    activation: str,
    arch: str = "mlp",
    image_shape: tuple[int, ...] | None = None,
    channels: Sequence[int] | None = None,
) -> int:
    """Give ``guide`` (after ``nn.Module.__init__``) ``x_dim``, ``latent_dim``, ``site``,
    the trunk ``trunk`` (:func:`pyro_vae.convnets.encoder_trunk`: an MLP of
    ``hidden_dims`` or, ``arch="conv"``, convolutions of ``channels`` on ``image_shape``)
    and the heads ``loc_head`` (μ) and ``log_scale_head`` (log σ), ``latent_dim`` outputs
    each, made in that order (so a seed gives the weights it always gave, and run folders'
    weight names stay). Returns the trunk's output width, for further heads.

    Raises:
        ValueError: :func:`check_sizes`'; :func:`~pyro_vae.convnets.encoder_trunk`'s (an
            unknown ``arch``, bad widths, a missing or wrong ``image_shape`` for ``"conv"``).
    """
    check_sizes(x_dim, latent_dim)
    guide.x_dim, guide.latent_dim, guide.site = x_dim, latent_dim, site
    guide.trunk, width = encoder_trunk(x_dim, hidden_dims, activation, arch, image_shape, channels)
    guide.loc_head = nn.Linear(width, latent_dim)
    guide.log_scale_head = nn.Linear(width, latent_dim)
    return width
