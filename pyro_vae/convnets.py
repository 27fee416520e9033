"""Convolutional encoder and decoder for images, and the ``arch`` switch between them and
the MLPs of :mod:`pyro_vae.nn`.

The layer shapes are those of pythae's benchmark networks for 28x28 single-channel
(``pythae.models.nn.benchmarks.mnist``) and 32x32 three-channel
(``pythae.models.nn.benchmarks.cifar``) images: convolutions with 4x4 kernels, stride 2
and padding 1, each halving the height and width (28 → 14 → 7 → 3, 32 → 16 → 8 → 4), the
channel widths doubling, then a flattening and linear maps; the decoder mirrors it with
4x4 transposed convolutions of stride 2. Here the transposed convolutions retrace the
encoder's sizes exactly (``output_padding`` 1 where a size was odd), so any image of at
least 2x2 pixels per convolution works, 8x8 digits included (8 → 4 → 2 → 1). Three
differences from pythae, each for a reason:

- widths ``(32, 64, 128)`` by default, not ``(128, 256, 512, 1024)``, so an epoch of
  Fashion-MNIST takes about a minute on two CPU cores (``channels`` sets them);
- no batch normalization: in training mode it makes one image's likelihood depend on the
  other images of its batch, and under vectorized particles on the other draws, so the
  ELBO would no longer be a sum over datapoints (nor the vectorized estimate equal the
  looped one), and its running statistics are buffers that Pyro's param store does not
  hold;
- the ``hidden_dims`` MLP between the convolutions and the latent code (pythae's is
  ``hidden_dims=()``), so ``--hidden`` sizes both architectures alike and the flow guides'
  context h(x) has the width it has with the MLP encoder.

Observations stay flattened (``[..., D]`` with D = C·H·W, channels first); the encoder
reshapes them to ``(C, H, W)`` and the decoder returns the likelihood's parameters
flattened, so likelihoods, evaluators and figures see what they see with an MLP. Both
networks take any leading dimensions (:class:`pyro_vae.nn.FoldLeadingDims`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from pyro_vae.checks import check_widths
from pyro_vae.nn import ACTIVATIONS, FoldLeadingDims, layer_widths, mlp

ARCHITECTURES = ("mlp", "conv")
DEFAULT_CHANNELS = (32, 64, 128)
PARAMETER_AXES = ("first", "last")
_KERNEL, _STRIDE, _PADDING = 4, 2, 1


def image_chw(image_shape, arg: str = "image_shape") -> tuple[int, int, int]:
    """``(C, H, W)`` from an image shape ``(H, W)`` (one channel) or ``(C, H, W)``.

    Raises:
        ValueError: naming ``arg``, when ``image_shape`` is neither.
    """
    shape = tuple(image_shape) if isinstance(image_shape, Sequence) else ()
    ok = all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
    if len(shape) not in (2, 3) or not ok:
        raise ValueError(
            f"{arg}: {image_shape!r}; expected the images' (H, W) or (C, H, W), positive integers"
        )
    return (1, *shape) if len(shape) == 2 else shape


def feature_sizes(image_shape, channels: Sequence[int]) -> list[tuple[int, int]]:
    """The (height, width) before and after each stride-2 convolution, one per width of
    ``channels``: ``len(channels) + 1`` pairs, each ⌊previous / 2⌋.

    Raises:
        ValueError: an input to some convolution is smaller than 2x2 (a 4x4 kernel with
            padding 1 needs it), naming the image shape and how many layers it takes.
    """
    _, h, w = image_chw(image_shape)
    sizes = [(h, w)]
    for _ in channels:
        h, w = sizes[-1]
        if min(h, w) < 2:
            most = math.floor(math.log2(min(sizes[0])))
            if most == 0:  # tester CJ: "shrink to 1x16 after 0 ...; take at most 0"
                raise ValueError(
                    f"channels: {tuple(channels)} asks for convolutions, but "
                    f"{sizes[0][0]}x{sizes[0][1]} images take none (each halves the size "
                    "and needs at least 2x2); expected images at least 2x2, or --arch mlp"
                )
            raise ValueError(
                f"channels: {tuple(channels)} asks for {len(channels)} convolutions, but "
                f"{sizes[0][0]}x{sizes[0][1]} images shrink to {h}x{w} after {len(sizes) - 1} "
                f"(each halves the size and needs at least 2x2); these images take at most "
                f"{most}"
            )
        sizes.append((h // 2, w // 2))
    return sizes


def _check(channels: Sequence[int], activation: str) -> tuple[int, ...]:
    check_widths("channels", channels)
    if not channels:
        raise ValueError("channels: (); expected at least one convolution's width")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: {activation!r} is not one of {', '.join(ACTIVATIONS)}")
    return tuple(channels)


class ConvEncoder(nn.Module):
    """φ(x): stride-2 convolutions, each followed by ``activation``, then the ``hidden_dims``
    MLP (each layer followed by ``activation``), from flattened images ``[..., C·H·W]`` (or
    ``[..., C, H, W]``) to features ``[..., out_features]``.

    Args:
        image_shape: ``(H, W)`` or ``(C, H, W)``.
        channels: the convolutions' output widths, one per convolution.
        hidden_dims: widths of the MLP after the convolutions (``()``: none).
        activation: a name of :data:`pyro_vae.nn.ACTIVATIONS`.

    Attributes:
        out_features: the feature width, ``hidden_dims[-1]``, or the flattened size of the
            last convolution's output when there is no MLP.

    Raises:
        ValueError: a bad ``image_shape``, ``channels``, width or activation, or more
            convolutions than the image size takes (:func:`feature_sizes`).
    """

    def __init__(
        self,
        image_shape,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        hidden_dims: Sequence[int] = (),
        activation: str = "elu",
    ) -> None:
        super().__init__()
        channels = _check(channels, activation)
        hidden_dims = layer_widths(hidden_dims)
        c, h, w = image_chw(image_shape)
        last = feature_sizes((h, w), channels)[-1]
        layers: list[nn.Module] = []
        for width_in, width in zip((c, *channels), channels, strict=False):
            conv = nn.Conv2d(width_in, width, _KERNEL, _STRIDE, _PADDING)
            layers += [conv, ACTIVATIONS[activation]()]
        flat = channels[-1] * last[0] * last[1]
        layers += [nn.Flatten(), mlp(flat, hidden_dims, activation=activation)]
        self.net = FoldLeadingDims(nn.Sequential(*layers), (c, h, w))
        self.out_features = int(hidden_dims[-1]) if len(hidden_dims) else flat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """The encoder's mirror: z ``[..., latent_dim]`` → the ``hidden_dims`` MLP → a linear
    map to the last convolution's feature map → stride-2 transposed convolutions back to
    ``(params_per_pixel · C, H, W)`` (the last one linear), returned flattened:
    ``[..., params_per_pixel · C·H·W]``.

    Args:
        latent_dim: size of z.
        image_shape: ``(H, W)`` or ``(C, H, W)`` of the images decoded.
        channels: the encoder's convolution widths (the decoder runs them in reverse).
        hidden_dims: widths of the MLP from z (``()``: none).
        activation: a name of :data:`pyro_vae.nn.ACTIVATIONS`.
        params_per_pixel: k, the likelihood's parameters per pixel (Bernoulli 1, Gaussian
            2, Categorical over L levels L).
        parameter_axis: how the k parameters of the D pixels are laid out in the flattened
            output: ``"first"``, k blocks of D (parameter j of every pixel, then parameter
            j + 1: the Gaussian's means, then its scales); ``"last"``, D blocks of k (all
            the parameters of one pixel together: a Categorical's L logits per pixel).

    Raises:
        ValueError: as :class:`ConvEncoder`; ``latent_dim`` or ``params_per_pixel`` not a
            positive integer, ``parameter_axis`` not ``"first"`` or ``"last"``.
    """

    def __init__(
        self,
        latent_dim: int,
        image_shape,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        hidden_dims: Sequence[int] = (),
        activation: str = "elu",
        params_per_pixel: int = 1,
        parameter_axis: str = "first",
    ) -> None:
        super().__init__()
        channels = _check(channels, activation)
        hidden_dims = layer_widths(hidden_dims)
        check_widths("latent_dim", [latent_dim])
        check_widths("params_per_pixel", [params_per_pixel])
        if parameter_axis not in PARAMETER_AXES:
            raise ValueError(
                f"parameter_axis: {parameter_axis!r} is not one of {', '.join(PARAMETER_AXES)}"
            )
        self.image_shape = image_chw(image_shape)
        self.params_per_pixel, self.parameter_axis = params_per_pixel, parameter_axis
        c, h, w = self.image_shape
        sizes = feature_sizes((h, w), channels)
        top, (top_h, top_w) = channels[-1], sizes[-1]
        layers: list[nn.Module] = [
            mlp(latent_dim, hidden_dims, top * top_h * top_w, activation),
            ACTIVATIONS[activation](),
            nn.Unflatten(1, (top, top_h, top_w)),
        ]
        widths = channels[::-1]
        for i, width_out in enumerate((*widths[1:], params_per_pixel * c)):
            (big_h, big_w), (small_h, small_w) = sizes[-2 - i], sizes[-1 - i]
            extra = (big_h - 2 * small_h, big_w - 2 * small_w)
            layers.append(
                nn.ConvTranspose2d(widths[i], width_out, _KERNEL, _STRIDE, _PADDING, extra)
            )
            if i < len(widths) - 1:
                layers.append(ACTIVATIONS[activation]())
        self.net = FoldLeadingDims(nn.Sequential(*layers), (latent_dim,))

    @property
    def out_features(self) -> int:
        """The flattened output width, ``params_per_pixel · C·H·W``."""
        return self.params_per_pixel * math.prod(self.image_shape)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        planes = self.net(z)  # [..., k·C, H, W]
        leading, k = planes.shape[:-3], self.params_per_pixel
        c, h, w = self.image_shape
        if self.parameter_axis == "first":
            return planes.reshape(*leading, k * c * h * w)
        per_pixel = planes.reshape(*leading, c, k, h, w).movedim(-3, -1)
        return per_pixel.reshape(*leading, c * h * w * k)


def check_architecture(arch: str, x_dim: int | None, image_shape, channels=None) -> None:
    """Refuse an unknown ``arch``, ``"conv"`` without an image shape of ``x_dim`` pixels
    (``None``: any number), an image shape given to ``"mlp"`` of other than ``x_dim``
    pixels, or ``channels`` given to ``"mlp"`` (which has no convolutions).

    Raises:
        ValueError: naming ``arch``, ``image_shape`` or ``channels``, the value and what was
            expected.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch: {arch!r} is not one of {', '.join(ARCHITECTURES)}")
    if arch != "conv" and image_shape is not None and x_dim is not None:
        _check_pixels(image_shape, x_dim)  # what the figures draw each row as (tester CW)
    if arch != "conv":
        if channels is not None:
            raise ValueError(
                f"channels: {tuple(channels)} sizes convolutions, but arch is {arch!r}; "
                "expected arch='conv' (--arch conv), or no channels"
            )
        return
    if image_shape is None:
        raise ValueError(
            "image_shape: None; arch='conv' needs the images' (H, W) or (C, H, W) "
            "(pyro_vae.data.DataSplits.image_shape), and data without one (a table, rows "
            "of an array) are no images; use arch='mlp' (--arch mlp)"
        )
    if x_dim is not None:
        _check_pixels(image_shape, x_dim)


def _check_pixels(image_shape, x_dim: int) -> None:
    """Refuse an ``image_shape`` of other than ``x_dim`` pixels (C·H·W)."""
    if math.prod(image_chw(image_shape)) != x_dim:
        raise ValueError(
            f"image_shape: {tuple(image_shape)} has {math.prod(image_chw(image_shape))} pixels, "
            f"but x_dim is {x_dim}; expected C·H·W = x_dim"
        )


def default_activation(arch: str, activation: str | None) -> str:
    """``activation``, or the default hidden nonlinearity for ``arch``: softplus for MLPs
    (Kingma & Welling 2013's), ELU (Clevert et al. 2016) for convolutional networks.
    Softplus convolutions at PyTorch's initialization train slowly: on Fashion-MNIST after
    10 epochs the conv VAE with softplus was 1.5 nats behind the MLP in log p(x), with ELU
    11.9 nats ahead (``benchmarks/conv_vs_mlp.md``), and a softplus conv M2 classifier
    stayed at chance on the digits where ELU reached 76%."""
    if activation is not None:
        return activation
    return "elu" if arch == "conv" else "softplus"


def encoder_trunk(
    x_dim: int,
    hidden_dims: Sequence[int],
    activation: str | None = None,
    arch: str = "mlp",
    image_shape=None,
    channels: Sequence[int] | None = None,
) -> tuple[nn.Module, int]:
    """An encoder trunk φ(x) on flattened inputs ``[..., x_dim]`` and its output width:
    the MLP ``x_dim -> hidden_dims`` (``arch="mlp"``; ``image_shape`` and ``channels`` are
    not used) or a :class:`ConvEncoder` (``arch="conv"``; ``channels`` default
    :data:`DEFAULT_CHANNELS`); ``activation`` default :func:`default_activation`'s.

    Raises:
        ValueError: :func:`check_architecture`'s, and the networks' own.
    """
    check_architecture(arch, x_dim, image_shape, channels)
    # one integer is one layer, as the models take it (tester FL: --guide-opt hidden_dims=16
    # failed as "object of type 'int' has no len()", blamed on the guide's construction)
    hidden_dims = layer_widths(hidden_dims)
    activation = default_activation(arch, activation)
    if arch == "conv":
        channels = DEFAULT_CHANNELS if channels is None else channels
        encoder = ConvEncoder(image_shape, channels, hidden_dims, activation)
        return encoder, encoder.out_features
    width = int(hidden_dims[-1]) if len(hidden_dims) else x_dim
    return mlp(x_dim, hidden_dims, activation=activation), width


def decoder_network(
    latent_dim: int,
    hidden_dims: Sequence[int],
    out_features: int,
    activation: str | None = None,
    arch: str = "mlp",
    image_shape=None,
    channels: Sequence[int] | None = None,
    parameter_axis: str = "first",
) -> nn.Module:
    """A decoder from z ``[..., latent_dim]`` to ``[..., out_features]``: the MLP
    ``latent_dim -> hidden_dims -> out_features`` (``arch="mlp"``) or a
    :class:`ConvDecoder` emitting ``out_features / (C·H·W)`` parameters per pixel, laid out
    as ``parameter_axis`` says (``arch="conv"``).

    Raises:
        ValueError: :func:`check_architecture`'s; ``out_features`` not a multiple of the
            image's pixels; the networks' own.
    """
    check_architecture(arch, None, image_shape, channels)
    activation = default_activation(arch, activation)
    if arch != "conv":
        return mlp(latent_dim, hidden_dims, out_features, activation)
    pixels = math.prod(image_chw(image_shape))
    if out_features % pixels:
        raise ValueError(
            f"out_features: {out_features} is not a whole number of parameters per pixel of "
            f"{tuple(image_shape)} images ({pixels} pixels)"
        )
    channels = DEFAULT_CHANNELS if channels is None else channels
    return ConvDecoder(
        latent_dim,
        image_shape,
        channels,
        hidden_dims,
        activation,
        out_features // pixels,
        parameter_axis,
    )


def likelihood_decoder(
    in_features: int,
    hidden_dims: Sequence[int],
    likelihood,
    activation: str | None = None,
    arch: str = "mlp",
    image_shape=None,
    channels: Sequence[int] | None = None,
) -> nn.Module:
    """:func:`decoder_network` emitting a :mod:`pyro_vae.likelihoods` likelihood's
    ``out_features`` parameters in its layout: a categorical reads L consecutive logits per
    pixel, the others blocks of D."""
    axis = "last" if likelihood.name == "categorical" else "first"
    return decoder_network(
        in_features, hidden_dims, likelihood.out_features, activation, arch, image_shape,
        channels, axis,
    )  # fmt: skip
