"""The MLP builder (layer layout, activations, refusals naming the argument) and
FoldLeadingDims (a network for `(batch, ...)` run on any leading dimensions)."""

import numpy as np
import pytest
import torch
from torch import nn

from pyro_vae.nn import ACTIVATIONS, FoldLeadingDims, layer_widths, mlp


def test_layers_are_linear_then_activation_with_a_linear_output():
    net = mlp(5, (7, 3), 2, activation="tanh")
    kinds = [type(layer) for layer in net]
    assert kinds == [nn.Linear, nn.Tanh, nn.Linear, nn.Tanh, nn.Linear]
    shapes = [
        (layer.in_features, layer.out_features) for layer in net if isinstance(layer, nn.Linear)
    ]
    assert shapes == [(5, 7), (7, 3), (3, 2)]


def test_the_output_is_the_composition_computed_by_hand():
    net = mlp(4, (6,), 3)
    x = torch.randn(10, 4)
    first, last = net[0], net[2]
    expected = (
        torch.nn.functional.softplus(x @ first.weight.T + first.bias) @ last.weight.T + last.bias
    )
    torch.testing.assert_close(net(x), expected)


def test_without_out_features_the_net_ends_in_the_last_hidden_activation():
    net = mlp(4, (6, 5), activation="relu")
    assert [type(layer) for layer in net] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU]
    assert (net(torch.randn(8, 4)) >= 0).all()


def test_no_hidden_layers_is_one_linear_map_or_the_identity():
    linear = mlp(4, (), 2)
    assert len(linear) == 1 and isinstance(linear[0], nn.Linear)
    x = torch.randn(3, 4)
    assert torch.equal(mlp(4, ())(x), x)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_each_named_activation_is_used(name):
    net = mlp(2, (3,), 1, activation=name)
    assert isinstance(net[1], ACTIVATIONS[name])


def test_widths_given_as_other_integer_types_are_ints():
    net = mlp(2, [torch.tensor(3), 4.0], 1)
    assert [layer.out_features for layer in net if isinstance(layer, nn.Linear)] == [3, 4, 1]


def test_an_unknown_activation_is_refused_with_the_choices():
    with pytest.raises(ValueError) as info:
        mlp(2, (3,), activation="swish")
    assert str(info.value) == "activation: 'swish' is not one of softplus, relu, tanh, elu"


@pytest.mark.parametrize("width", [0, -1])
def test_a_non_positive_width_is_refused(width):
    with pytest.raises(ValueError) as info:
        mlp(2, (3, width))
    assert str(info.value) == f"hidden_dims: layer width {width} is not a positive integer"


class _Strict(nn.Module):
    """A user's network: a convolution that takes exactly ``(batch, 1, 4, 4)``, returning
    a ``(batch, 2, 4, 4)`` map and a ``(batch, 3)`` summary."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(1, 2, 3, padding=1), nn.Linear(32, 3)

    def forward(self, x):
        assert x.dim() == 4, f"got {tuple(x.shape)}"
        h = self.conv(x)
        return h, self.head(h.flatten(1))


def test_fold_leading_dims_equals_calling_the_network_on_each_leading_index():
    torch.manual_seed(0)
    net = _Strict()
    folded = FoldLeadingDims(net, (1, 4, 4))
    x = torch.randn(3, 5, 1, 4, 4)  # [S, B, C, H, W]: particles and rows
    maps, summary = folded(x)
    assert maps.shape == (3, 5, 2, 4, 4) and summary.shape == (3, 5, 3)
    for s in range(3):
        one_maps, one_summary = net(x[s])
        torch.testing.assert_close(maps[s], one_maps)
        torch.testing.assert_close(summary[s], one_summary)


def test_fold_leading_dims_takes_flattened_rows_and_no_leading_dims():
    torch.manual_seed(0)
    net = _Strict()
    folded = FoldLeadingDims(net, (1, 4, 4))
    x = torch.randn(2, 3, 16)  # flattened images, as the models' observations are
    torch.testing.assert_close(folded(x)[1], folded(x.reshape(2, 3, 1, 4, 4))[1])
    torch.testing.assert_close(folded(x[0, 0])[1], net(x[0, 0].reshape(1, 1, 4, 4))[1][0])
    linear = FoldLeadingDims(nn.Linear(4, 2), (4,))
    assert linear(torch.randn(4, 1, 3, 4)).shape == (4, 1, 3, 2)
    assert isinstance(folded(x), tuple) and isinstance(
        FoldLeadingDims(lambda v: [v, v], (4,))(torch.zeros(2, 4)), list
    )


def test_fold_leading_dims_passes_gradients_to_the_wrapped_weights():
    net = nn.Linear(3, 1)
    FoldLeadingDims(net, (3,))(torch.ones(2, 5, 3)).sum().backward()
    # ten rows of ones: d/dw Σ (w·1 + b) = 10 per weight, 10 for the bias
    torch.testing.assert_close(net.weight.grad, torch.full((1, 3), 10.0))
    torch.testing.assert_close(net.bias.grad, torch.tensor([10.0]))


@pytest.mark.parametrize("shape", [(), (0, 3), (2.0,), 5, (True,)])
def test_fold_leading_dims_refuses_a_bad_input_shape(shape):
    with pytest.raises(ValueError, match=r"input_shape: .*expected the shape of one input row"):
        FoldLeadingDims(nn.Identity(), shape)


def test_fold_leading_dims_refuses_inputs_and_outputs_that_do_not_fit():
    folded = FoldLeadingDims(nn.Identity(), (1, 4, 4))
    with pytest.raises(ValueError) as info:
        folded(torch.zeros(2, 15))
    assert str(info.value) == (
        "x: shape (2, 15); expected [..., 1, 4, 4] or [..., 16] (flattened) for this network"
    )
    summed = FoldLeadingDims(lambda v: v.sum(), (3,))
    with pytest.raises(ValueError, match=r"net: returned shape \(\) for 6 input rows"):
        summed(torch.zeros(2, 3, 3))


@pytest.mark.parametrize(
    ("given", "widths"),
    [(16, (16,)), ([16], (16,)), ((512, 256), (512, 256)), (np.int64(8), (8,)), ([], ())],
)
def test_layer_widths_take_one_width_or_a_sequence(given, widths):
    # tester AF: --model-opt hidden_dims=16 ended in "'int' object is not iterable"
    assert layer_widths(given) == widths


@pytest.mark.parametrize("given", [1.5, [16, 0], [True], "16", [8.5], None])
def test_layer_widths_refuse_what_is_no_width_naming_the_argument(given):
    with pytest.raises(ValueError, match=r"hidden_dims: .*positive integer"):
        layer_widths(given)


def test_a_model_given_one_width_builds_one_hidden_layer():
    from models.vae import VAE

    one, listed = VAE(64, 4, hidden_dims=16), VAE(64, 4, hidden_dims=[16])
    assert one.hidden_dims == listed.hidden_dims == (16,)
    shapes = [p.shape for p in one.decoder.parameters()]
    assert shapes == [p.shape for p in listed.decoder.parameters()]
