"""The variational autoencoder (Kingma & Welling 2013; Rush, CS281 lecture 18.3).

Generative model, for each datapoint n of a dataset of N:

    z_n ~ p(z)                         (latent code, ``latent_dim``: N(0, I) by default,
                                        or a learned mixture, :mod:`models.priors`)
    x_n | z_n ~ p_θ(x | z_n)           (likelihood decoded by an MLP: Bernoulli, Gaussian,
                                        or the lecture's softmax over pixel levels)

The amortized guide q_λ(z | x) = N(μ_λ(x), σ_λ(x)) is a separate object
(:class:`pyro_vae.guides.AmortizedNormal`, from :meth:`VAE.make_guide`), so guides and
estimators can be swapped without touching the model. The exception is the VampPrior
(``prior="vamp"``), whose p(z) is made of the guide's own encoder: that model builds its
guide first and holds it, ``make_guide()`` returns that one guide, and a different guide
leaves the prior a mixture of the held encoder's posteriors, no longer of q's.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch

from models.latent_decoder import LatentDecoderModel
from models.priors import PRIORS, GaussianMixturePrior, VampPrior
from pyro_vae.convnets import default_activation
from pyro_vae.guides import AmortizedNormal
from pyro_vae.model_protocol import ConvertsTiedGuide


class VAE(ConvertsTiedGuide, LatentDecoderModel):
    """p(z) p_θ(x | z) with a standard Normal (or learned mixture) prior and an MLP decoder.

    Args:
        x_dim: number of pixels D.
        latent_dim: size of z.
        hidden_dims: decoder hidden widths (the guide's encoder uses them reversed).
        likelihood: one of :data:`pyro_vae.likelihoods.LIKELIHOODS` (``bernoulli``,
            ``gaussian``, ``categorical``, ``normal``, ``continuous-bernoulli``).
        levels: pixel levels L for ``categorical``.
        activation: hidden nonlinearity (default: softplus for an MLP, ELU for
            ``arch="conv"``; :func:`pyro_vae.convnets.default_activation`).
        arch: ``"mlp"``, or ``"conv"`` for convolutional decoder and guide encoder
            (:mod:`pyro_vae.convnets`; ``hidden_dims`` is then the MLP between the
            convolutions and z).
        image_shape: the images' ``(H, W)`` or ``(C, H, W)``, with C·H·W = ``x_dim``; needed
            by ``arch="conv"`` (``pyro-vae fit`` passes the data's).
        channels: the convolutions' widths (default ``(32, 64, 128)``), ``arch="conv"`` only.
        prior: ``"normal"`` (N(0, I)), ``"mog"`` (:class:`models.priors.GaussianMixturePrior`)
            or ``"vamp"`` (:class:`models.priors.VampPrior` on this model's own guide,
            :attr:`tied_guide`).
        prior_components: mixture components K (``None``: 10 for ``"mog"``, 50 for
            ``"vamp"``; refused for ``"normal"``).

    Raises:
        ValueError: an unknown ``prior``, or a ``prior_components`` that is not a positive
            integer or is given for the Normal prior.
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
        activation: str | None = None,
        arch: str = "mlp",
        image_shape: tuple[int, ...] | None = None,
        channels: Sequence[int] | None = None,
        prior: str = "normal",
        prior_components: int | None = None,
    ) -> None:
        activation = default_activation(arch, activation)
        if prior not in PRIORS:
            raise ValueError(f"prior: {prior!r} is not one of {', '.join(map(repr, PRIORS))}")
        if prior == "normal" and prior_components is not None:
            raise ValueError(
                f"prior_components: {prior_components!r} given, but prior='normal' has none"
            )
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
        self.prior_name, self._tied = prior, ()
        if prior == "mog":
            self.learned_prior = GaussianMixturePrior(latent_dim, _or(prior_components, 10))
        elif prior == "vamp":
            self._tied = (self.make_guide(),)  # a tuple: the guide's weights stay its own
            # the data's range: [0, 1] pixels, [0, L − 1] levels, or a table's standardized
            # columns on the whole real line (tester EL: clipped to [0, 1])
            data_max = 1.0 if levels is None or likelihood != "categorical" else levels - 1.0
            data_max = None if likelihood == "normal" else data_max
            k = _or(prior_components, 50)
            self.learned_prior = VampPrior(self._tied[0], x_dim, k, data_max)

    @property
    def tied_guide(self) -> AmortizedNormal | None:
        """The guide whose encoder the prior uses (``prior="vamp"``), else ``None``: the
        guide this model must be trained with for its prior to be the VampPrior."""
        return self._tied[0] if self._tied else None

    def prior(self, batch_shape: tuple[int, ...] = ()) -> dist.TorchDistribution:
        """p(z): N(0, I), or the learned mixture, with event shape ``[latent_dim]``."""
        if self.prior_name != "normal":
            return self.learned_prior(batch_shape)
        zeros = self.prior_loc.new_zeros(*batch_shape, self.latent_dim)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def make_guide(self) -> AmortizedNormal:
        """The amortized Normal guide with the decoder's hidden widths reversed (and its
        convolutions, with ``arch="conv"``); with ``prior="vamp"``, always the one guide the
        prior uses (:attr:`tied_guide`)."""
        if self._tied:
            return self._tied[0]
        return AmortizedNormal(
            self.x_dim,
            self.latent_dim,
            self.hidden_dims[::-1],
            self.activation,
            **self.network_options,
        )


def _or(value: int | None, default: int) -> int:
    return default if value is None else value
