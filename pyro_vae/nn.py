"""Small network builders shared by models and guides."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

ACTIVATIONS = {"softplus": nn.Softplus, "relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}


def mlp(
    in_features: int,
    hidden: Sequence[int],
    out_features: int | None = None,
    activation: str = "softplus",
) -> nn.Sequential:
    """A multilayer perceptron ``in -> hidden[0] -> ... -> hidden[-1] (-> out)``.

    Every hidden layer is followed by ``activation``; the optional output layer is linear.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: {activation!r} is not one of {', '.join(ACTIVATIONS)}")
    for width in hidden:
        if int(width) < 1:
            raise ValueError(f"hidden: layer width {width} is not a positive integer")
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, int(h)), ACTIVATIONS[activation]()]
        width = int(h)
    if out_features is not None:
        layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)
