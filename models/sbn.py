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

import pyro.distributions as dist
import torch
from torch import nn

from models.latent_decoder import LatentDecoderModel
from pyro_vae.guides import AmortizedBernoulli


class SBN(LatentDecoderModel):
    """p(z) p_θ(x | z) with J Bernoulli latents and a Bernoulli likelihood.

    Args:
        x_dim: number of pixels D.
        latent_dim: number of binary latents J.
        hidden_dims: decoder hidden widths (``()``: linear, the classic SBN).
        likelihood: must be ``bernoulli`` (kept as an argument for the CLI's contract).
        activation: hidden nonlinearity of decoder and guide.
        guide_baseline: ``infer["baseline"]`` options for the guide's site (TraceGraph_ELBO).
    """

    #: May be recorded without being asked (``pyro_vae.estimators.compiled.should_record``):
    #: no Python branching on tensor values; trace structure fixed by batch shape.
    recordable = True

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
        if likelihood != "bernoulli":
            raise ValueError(
                f"likelihood: the SBN models binary pixels; got {likelihood!r}, "
                "expected 'bernoulli'"
            )
        super().__init__(x_dim, latent_dim, hidden_dims, likelihood, None, activation)
        self.guide_baseline = guide_baseline
        self.prior_logits = nn.Parameter(torch.zeros(latent_dim))

    def prior(self, batch_shape: tuple[int, ...] = ()) -> dist.TorchDistribution:
        """p(z): independent Bernoullis with learned logits, event shape ``[J]``."""
        return dist.Bernoulli(logits=self.prior_logits.expand(*batch_shape, -1)).to_event(1)

    def make_guide(self) -> AmortizedBernoulli:
        """A logistic-regression (or MLP) recognition network q(z | x)."""
        return AmortizedBernoulli(
            self.x_dim,
            self.latent_dim,
            self.hidden_dims[::-1],
            self.activation,
            baseline=self.guide_baseline,
        )
