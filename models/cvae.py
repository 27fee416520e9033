"""The conditional variational autoencoder (Sohn, Lee & Yan 2015, "Learning Structured
Output Representation using Deep Conditional Generative Models").

Generative model, for each datapoint n, given its condition y_n:

    z_n ~ p(z) = N(0, I)                        (latent code, ``latent_dim``)
    x_n | z_n, y_n ~ p_θ(x | z_n, y_n)          (a decoder on [z, c(y)]: Bernoulli, Gaussian,
                                                 or the lecture's softmax over levels)

and the amortized guide q_λ(z | x, y) = N(μ_λ(x, c(y)), σ_λ(x, c(y))) (:class:`CVAEGuide`).
The condition enters both networks as c(y): the one-hot vector of a class label y
(``num_classes``), or y itself, a float vector of ``condition_dim`` entries (a quadrant of
an image, as in Pyro's CVAE tutorial and ``benchmarks/cvae_quadrant.py``).

Two architectures (``arch``), both built from :mod:`pyro_vae.convnets`:

- ``"mlp"``: the decoder is an MLP on [z, c(y)], the guide an MLP on [x, c(y)];
- ``"conv"``: the decoder is :class:`pyro_vae.convnets.ConvDecoder` on [z, c(y)] (the
  condition joins z before the decoder's first linear layer, then the transposed
  convolutions); the guide runs :class:`pyro_vae.convnets.ConvEncoder`'s convolutions on x
  alone and joins c(y) to their flattened features, before the ``hidden_dims`` MLP and the
  two linear heads. Joining after the convolutions, not as extra image planes, keeps the
  convolutions those of the unconditional conv VAE, and a float condition of any width
  needs no spatial layout.

Trained and evaluated on ``(x, y, observed)`` (:mod:`pyro_vae.labels`; ``uses_labels =
"all"``: every label must be observed), the ELBO and the importance-weighted bound are
those of log p(x | y) = log ∫ p(x | z, y) p(z) dz.

Why p(z) = N(0, I) rather than Sohn et al.'s learned p(z | y): with a one-hot y, a
per-class Gaussian p(z | y) only moves each class's codes, which the decoder's own input
c(y) already does; a fixed prior keeps the KL term and ``generate_given`` simple and the
model comparable to :class:`models.vae.VAE`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from pyro_vae.convnets import (
    check_architecture,
    default_activation,
    encoder_trunk,
    likelihood_decoder,
)
from pyro_vae.guides import AmortizedNormal
from pyro_vae.labels import check_class_labels
from pyro_vae.likelihoods import make_likelihood
from pyro_vae.nn import layer_widths
from pyro_vae.plates import data_plate


class Condition(nn.Module):
    """c(y): the one-hot ``[..., num_classes]`` of class labels (a ``LongTensor``), or a
    float ``[..., condition_dim]`` condition as it is; exactly one of the two is given.

    Raises:
        ValueError: both or neither of ``num_classes`` and ``condition_dim``, or one that is
            not a positive integer.
    """

    #: No Python branching on tensor values (the one-hot is a comparison, not ``one_hot``).
    recordable = True

    def __init__(self, num_classes: int | None = None, condition_dim: int | None = None):
        super().__init__()
        if (num_classes is None) == (condition_dim is None):
            raise ValueError(
                f"num_classes, condition_dim: {num_classes!r} and {condition_dim!r}; expected "
                "exactly one (class labels, or a float condition vector)"
            )
        for name, value in (("num_classes", num_classes), ("condition_dim", condition_dim)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name}: {value!r} is not a positive integer")
            if value is not None and value < 1:
                raise ValueError(f"{name}: {value!r} is not a positive integer")
        self.num_classes = num_classes
        self.width = num_classes if num_classes is not None else condition_dim

    def forward(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """c(y) in ``like``'s dtype and device: ``[B, width]``.

        Raises:
            ValueError: a float condition whose last dimension is not ``condition_dim``,
                or of one dimension (``[B]`` for ``[B, 1]``); labels outside 0..C-1."""
        if self.num_classes is not None:
            # a comparison, not one_hot, which reads y's largest value (so a step could not
            # be recorded); a label outside 0..C-1 would give a row of zeros, so each is
            # checked outside a recording
            check_class_labels(y, self.num_classes)
            classes = torch.arange(self.num_classes, device=y.device)
            return (y[..., None] == classes).to(like)
        if y.dim() < 2 or y.shape[-1] != self.width:  # shapes only: still recordable
            # tester EZ: a [B] condition failed inside the decoder's matmul, unnamed
            raise ValueError(
                f"y: a condition of shape {tuple(y.shape)}; expected [B, {self.width}] "
                f"(condition_dim={self.width}; one number per image is [B, 1])"
            )
        return y.to(like)


class CVAE(PyroModule):
    """p(z) p_θ(x | z, y) with p(z) = N(0, I) and a decoder (MLP or convolutional) on
    [z, c(y)].

    Args:
        x_dim: number of pixels D.
        num_classes: C, for class labels y (one-hot encoded); or
        condition_dim: the width of a float condition y. Exactly one of the two.
        latent_dim: size of z.
        hidden_dims: decoder hidden widths (the guide's encoder uses them reversed).
        likelihood: one of :data:`pyro_vae.likelihoods.LIKELIHOODS` (``bernoulli``,
            ``gaussian``, ``categorical``, ``normal``, ``continuous-bernoulli``).
        levels: pixel levels L for ``categorical``.
        activation: hidden nonlinearity (default: softplus for an MLP, ELU for
            ``arch="conv"``; :func:`pyro_vae.convnets.default_activation`).
        arch: ``"mlp"``, or ``"conv"`` for a convolutional decoder and guide encoder
            (module docstring; ``hidden_dims`` is then the MLP between the convolutions and
            [z, c(y)]).
        condition_dim: see ``num_classes``.
        image_shape: the images' ``(H, W)`` or ``(C, H, W)``, with C·H·W = ``x_dim``; needed
            by ``arch="conv"`` (``pyro-vae fit`` passes the data's), not used by ``"mlp"``.
        channels: the convolutions' widths (default ``(32, 64, 128)``), ``arch="conv"`` only.

    Raises:
        ValueError: an unknown ``arch``; with ``"conv"``, no ``image_shape``, one of other
            than ``x_dim`` pixels, or more convolutions than its size takes
            (:mod:`pyro_vae.convnets`); ``channels`` with ``"mlp"``; :class:`Condition`'s.
    """

    generative = True
    #: Both labels and images are always observed, so every label a batch carries is used.
    uses_labels = "all"
    #: No Python branching on tensor values; trace structure fixed by batch shape.
    recordable = True

    def __init__(
        self,
        x_dim: int,
        num_classes: int | None = None,
        latent_dim: int = 20,
        hidden_dims: Sequence[int] = (400,),
        likelihood: str = "bernoulli",
        levels: int | None = None,
        activation: str | None = None,
        arch: str = "mlp",
        condition_dim: int | None = None,
        image_shape: tuple[int, ...] | None = None,
        channels: Sequence[int] | None = None,
    ) -> None:
        activation = default_activation(arch, activation)
        super().__init__(name="model")
        check_architecture(arch, x_dim, image_shape, channels)
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"latent_dim: {latent_dim!r} is not a positive integer")
        self.condition = Condition(num_classes, condition_dim)
        self.x_dim, self.latent_dim, self.activation = x_dim, latent_dim, activation
        self.num_classes = num_classes
        self.hidden_dims = layer_widths(hidden_dims)
        self.likelihood = make_likelihood(likelihood, x_dim, levels)
        self.arch = arch
        self.image_shape = None if arch == "mlp" else tuple(image_shape)
        self.channels = None if channels is None else tuple(int(c) for c in channels)
        width = self.condition.width
        self.condition_dim = condition_dim
        self.decoder = likelihood_decoder(
            latent_dim + width, self.hidden_dims, self.likelihood, activation, arch,
            self.image_shape, self.channels,
        )  # fmt: skip

    def prior(self, like: torch.Tensor, batch_shape: tuple[int, ...]) -> dist.Normal:
        """p(z) = N(0, I), event shape ``[latent_dim]``, on ``like``'s device."""
        zeros = like.new_zeros(*batch_shape, self.latent_dim)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def logits(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The decoder's output on [z, c]; ``c`` ``[B, width]`` is broadcast over the
        leading dims of ``z`` (vectorized particles) ``[..., B, latent_dim]``."""
        return self.decoder(torch.cat([z, c.expand(*z.shape[:-1], c.shape[-1])], -1))

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        observed: torch.Tensor | None = None,
        num_data: int | None = None,
    ) -> None:
        """The model on ``x`` ``[B, D]`` given ``y`` (``[B]`` labels or ``[B, width]``);
        ``observed`` is the fit loop's mask, all true for this model."""
        c = self.condition(y, x)
        with data_plate(x, num_data):
            z = pyro.sample("z", self.prior(x, (x.shape[0],)))
            pyro.sample("x", self.likelihood.distribution(self.logits(z, c)), obs=x)

    def generate_given(self, y: torch.Tensor) -> torch.Tensor:
        """Conditional samples E[x | z, y] for z ~ p(z), one per row of ``y``: ``[M, D]``,
        data units."""
        like = next(self.decoder.parameters())
        c = self.condition(y, like)
        z = self.prior(like, (c.shape[0],)).sample()
        return self.likelihood.mean(self.logits(z, c))

    def make_guide(self) -> CVAEGuide:
        """q(z | x, y) with the decoder's hidden widths reversed (and its convolutions, with
        ``arch="conv"``)."""
        return CVAEGuide(self, self.hidden_dims[::-1])


class CVAEGuide(PyroModule):
    """q_λ(z | x, y) = N(μ_λ(φ(x), c(y)), diag σ_λ(φ(x), c(y))²): the amortized Normal guide
    (:class:`pyro_vae.guides.AmortizedNormal`) on the rows [φ(x), c(y)], where φ(x) is x
    itself (``arch="mlp"``) or the flattened features of the model's convolutions on x
    (``"conv"``: :class:`pyro_vae.convnets.ConvEncoder` without its MLP, which
    ``hidden_dims`` then gives after c(y) has joined).

    Args:
        model: the :class:`CVAE` whose sizes, condition, activation and architecture it
            takes.
        hidden_dims: the widths of the MLP on [φ(x), c(y)].
    """

    recordable = True

    def __init__(self, model: CVAE, hidden_dims: Sequence[int] = (400,)) -> None:
        super().__init__(name="guide")
        self.condition = Condition(model.num_classes, model.condition_dim)
        # no hidden widths: the convolutions alone (an empty Sequential, no weights, for "mlp")
        self.features, features = encoder_trunk(
            model.x_dim, (), model.activation, model.arch, model.image_shape, model.channels
        )
        width = features + model.condition.width
        self.encoder = AmortizedNormal(width, model.latent_dim, hidden_dims, model.activation)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        observed: torch.Tensor | None = None,
        num_data: int | None = None,
    ) -> torch.Tensor:
        x = x.to(torch.get_default_dtype())  # categorical levels are integers
        h = self.features(x)
        return self.encoder(torch.cat([h, self.condition(y, h)], -1), num_data)
