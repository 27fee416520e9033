"""The MLP builder: layer layout, activations, and refusals naming the argument."""

import pytest
import torch
from torch import nn

from pyro_vae.nn import ACTIVATIONS, mlp


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
    assert str(info.value) == f"hidden: layer width {width} is not a positive integer"
