"""The convolutional encoder and decoder: pythae's layer shapes, sizes retraced exactly for
any image, the likelihoods' parameter layouts, any leading dimensions, and refusals that
name the argument."""

import math

import pytest
import torch
from torch import nn

from pyro_vae.convnets import (
    ConvDecoder,
    ConvEncoder,
    check_architecture,
    decoder_network,
    default_activation,
    encoder_trunk,
    feature_sizes,
    image_chw,
)


def test_image_shapes_are_channels_height_width():
    assert image_chw((28, 28)) == (1, 28, 28)
    assert image_chw([3, 32, 32]) == (3, 32, 32)
    for bad in [(28,), (1, 2, 3, 4), (0, 5), (2.0, 3), None]:
        with pytest.raises(ValueError, match=r"image_shape: .*expected the images' \(H, W\)"):
            image_chw(bad)


def test_each_convolution_halves_the_size_as_in_pythaes_networks():
    # pythae's MNIST encoder: 28 -> 14 -> 7 -> 3 (-> 1); its CIFAR one: 32 -> 16 -> 8 -> 4 -> 2
    assert feature_sizes((28, 28), (1, 1, 1, 1)) == [(28, 28), (14, 14), (7, 7), (3, 3), (1, 1)]
    assert feature_sizes((3, 32, 32), (1,) * 4)[1:] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert feature_sizes((8, 8), (1, 1, 1))[-1] == (1, 1)


def test_more_convolutions_than_an_image_takes_are_refused_naming_its_size():
    with pytest.raises(ValueError) as info:
        ConvEncoder((8, 8), (4, 8, 16, 32))
    assert str(info.value) == (
        "channels: (4, 8, 16, 32) asks for 4 convolutions, but 8x8 images shrink to 1x1 after 3 "
        "(each halves the size and needs at least 2x2); these images take at most 3"
    )
    # tester CJ: "shrink to 1x5 after 0 ...; these images take at most 0"
    with pytest.raises(ValueError, match=r"1x5 images take none .*; expected images at least "
                       r"2x2, or --arch mlp"):  # fmt: skip
        ConvEncoder((1, 5), (4,))


def test_the_encoder_is_4x4_stride_2_convolutions_then_the_mlp():
    encoder = ConvEncoder((28, 28), (4, 8, 16), (10,), "relu")
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 4), (4, 8), (8, 16)]
    assert {(c.kernel_size, c.stride, c.padding) for c in convs} == {((4, 4), (2, 2), (1, 1))}
    linear = [m for m in encoder.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(16 * 3 * 3, 10)]
    assert encoder.out_features == 10
    assert ConvEncoder((3, 32, 32), (4, 8), ()).out_features == 8 * 8 * 8


@pytest.mark.parametrize("shape", [(28, 28), (3, 32, 32), (8, 8), (2, 7, 9)])
def test_the_decoder_retraces_the_encoders_sizes_for_any_image(shape):
    torch.manual_seed(0)
    channels = (3, 5) if min(shape[-2:]) < 16 else (3, 5, 6)
    d = math.prod(shape)
    encoder = ConvEncoder(shape, channels, (7,))
    decoder = ConvDecoder(2, shape, channels, (7,), params_per_pixel=3)
    assert encoder(torch.rand(4, d)).shape == (4, 7)
    out = decoder(torch.randn(4, 2))
    assert out.shape == (4, 3 * d) and decoder.out_features == 3 * d
    planes = decoder.net(torch.randn(4, 2))
    assert planes.shape[-2:] == shape[-2:]


def test_both_networks_take_any_leading_dimensions():
    torch.manual_seed(0)
    encoder, decoder = ConvEncoder((8, 8), (2, 4), (5,)), ConvDecoder(3, (8, 8), (2, 4), (5,))
    x, z = torch.rand(6, 64), torch.randn(4, 6, 3)  # rows; particles x rows
    torch.testing.assert_close(encoder(x.expand(2, 6, 64))[1], encoder(x))
    out = decoder(z)
    assert out.shape == (4, 6, 64)
    for s in range(4):
        torch.testing.assert_close(out[s], decoder(z[s]))


def test_parameter_layouts_are_blocks_of_pixels_or_parameters_per_pixel():
    """``first``: parameter j of pixel p at j·D + p (the Gaussian's means, then scales);
    ``last``: at p·k + j (a Categorical's logits of one pixel together)."""
    torch.manual_seed(0)
    z = torch.randn(5, 2)
    for shape in [(4, 4), (3, 4, 4)]:
        c, d, k = image_chw(shape)[0], math.prod(shape), 3
        first = ConvDecoder(2, shape, (4,), (), params_per_pixel=k)
        last = ConvDecoder(2, shape, (4,), (), params_per_pixel=k, parameter_axis="last")
        last.load_state_dict(first.state_dict())
        planes = first.net(z)  # [5, k·C, 4, 4]
        by_parameter = planes.reshape(5, k, c, 4, 4).reshape(5, k, d)
        by_pixel = planes.reshape(5, c, k, 4, 4).permute(0, 1, 3, 4, 2).reshape(5, d, k)
        torch.testing.assert_close(first(z).reshape(5, k, d), by_parameter)
        torch.testing.assert_close(last(z).reshape(5, d, k), by_pixel)
        if c == 1:  # one channel: the same numbers, transposed
            torch.testing.assert_close(last(z).reshape(5, d, k), first(z).reshape(5, k, d).mT)


def test_the_arch_switch_builds_the_mlp_unchanged_or_the_conv_nets():
    trunk, width = encoder_trunk(64, (8, 6), "tanh")
    assert width == 6 and [type(m) for m in trunk] == [nn.Linear, nn.Tanh, nn.Linear, nn.Tanh]
    assert encoder_trunk(64, (), "tanh")[1] == 64
    assert isinstance(decoder_network(2, (8,), 64), nn.Sequential)
    conv, width = encoder_trunk(64, (8,), arch="conv", image_shape=(8, 8), channels=(2,))
    assert isinstance(conv, ConvEncoder) and width == 8
    decoder = decoder_network(2, (8,), 128, arch="conv", image_shape=(8, 8), channels=[2])
    assert isinstance(decoder, ConvDecoder) and decoder.params_per_pixel == 2
    default = encoder_trunk(64, (), arch="conv", image_shape=(8, 8))[0]
    widths = [m.out_channels for m in default.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [32, 64, 128]


def test_the_arch_switch_refuses_what_it_cannot_build():
    with pytest.raises(ValueError, match="arch: 'resnet' is not one of mlp, conv"):
        encoder_trunk(64, (8,), arch="resnet")
    with pytest.raises(ValueError, match=r"image_shape: None; arch='conv' needs the images'"):
        encoder_trunk(64, (8,), arch="conv")
    with pytest.raises(ValueError, match=r"a table, rows of an array\) are no images; use arch="):
        check_architecture("conv", 64, None)
    with pytest.raises(ValueError) as info:
        check_architecture("conv", 64, (3, 8, 8))
    assert str(info.value) == (
        "image_shape: (3, 8, 8) has 192 pixels, but x_dim is 64; expected C·H·W = x_dim"
    )
    with pytest.raises(ValueError, match=r"channels: \(8,\) sizes convolutions, but arch is"):
        decoder_network(2, (8,), 64, channels=(8,))
    with pytest.raises(ValueError, match="out_features: 100 is not a whole number"):
        decoder_network(2, (8,), 100, arch="conv", image_shape=(8, 8))
    with pytest.raises(ValueError, match="channels: 0 is not a positive layer width"):
        ConvEncoder((8, 8), (0,))
    with pytest.raises(ValueError, match=r"channels: \(\); expected at least one"):
        ConvDecoder(2, (8, 8), ())
    with pytest.raises(ValueError, match="parameter_axis: 'middle' is not one of first, last"):
        ConvDecoder(2, (8, 8), (2,), parameter_axis="middle")
    with pytest.raises(ValueError, match="activation: 'gelu' is not one of"):
        ConvEncoder((8, 8), (2,), activation="gelu")


def test_conv_networks_default_to_elu_and_mlps_to_softplus():
    from models.cvae import CVAE
    from models.m2 import M2
    from models.vae import VAE

    assert default_activation("conv", None) == "elu"
    assert default_activation("mlp", None) == "softplus"
    assert default_activation("conv", "softplus") == "softplus"  # an explicit choice stays

    def kinds(module):
        return {type(m) for m in module.modules()} & {nn.ELU, nn.Softplus}

    for cls, extra in ((VAE, {}), (CVAE, {"num_classes": 3}), (M2, {"num_classes": 3})):
        conv = cls(64, latent_dim=2, hidden_dims=(8,), arch="conv", image_shape=(8, 8),
                   channels=(2,), **extra)  # fmt: skip
        assert kinds(conv) | kinds(conv.make_guide()) == {nn.ELU}, cls.__name__
        mlp = cls(64, latent_dim=2, hidden_dims=(8,), **extra)
        assert kinds(mlp) | kinds(mlp.make_guide()) == {nn.Softplus}, cls.__name__
