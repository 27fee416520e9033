"""Small network builders shared by models and guides, and :class:`FoldLeadingDims`, which
lets a network written for ``(batch, ...)`` inputs take the extra leading dimensions that
vectorized particles and the evaluators add."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {"softplus": nn.Softplus, "relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}


def layer_widths(widths: int | Sequence[int], arg: str = "hidden_dims") -> tuple[int, ...]:
    """``widths`` as a tuple of hidden-layer widths: one integer is one layer (``16`` is
    ``(16,)``, as ``--model-opt hidden_dims=16`` gives it), a sequence is one layer each.

    Raises:
        ValueError: a width that is not a positive integer (a bool, 1.5, 0; a whole float
            such as 4.0 is taken as 4), or ``widths`` neither an integer nor a sequence;
            naming ``arg`` and the value.
    """
    one = isinstance(widths, numbers.Integral) and not isinstance(widths, bool)
    listed = [widths] if one else widths
    if isinstance(listed, str | bytes) or not isinstance(listed, Sequence):
        raise ValueError(
            f"{arg}: {widths!r} is not a layer width or a list of them; expected a positive "
            "integer or a sequence of positive integers, e.g. [400] or [512, 256]"
        )
    for width in listed:
        whole = isinstance(width, numbers.Integral) or (
            isinstance(width, numbers.Real) and float(width).is_integer()
        )  # 4.0 from a JSON file is the width 4; 1.5 had been cut to 1 without a word
        if isinstance(width, bool) or not whole or width < 1:
            raise ValueError(
                f"{arg}: width {width!r} in {widths!r} is not a positive integer; expected "
                "widths such as [400] or [512, 256]"
            )
    return tuple(int(width) for width in listed)


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
            raise ValueError(f"hidden_dims: layer width {width} is not a positive integer")
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, int(h)), ACTIVATIONS[activation]()]
        width = int(h)
    if out_features is not None:
        layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


class FoldLeadingDims(nn.Module):
    """Run ``net``, written for inputs ``(batch, *input_shape)``, on ``[*leading,
    *input_shape]``: every leading dimension is folded into one batch dimension, ``net``
    is called once, and each output ``(batch, *out)`` is unfolded to ``[*leading, *out]``.

    Why it is needed: a Pyro model's tensors carry more leading dimensions than the data
    plate's. Under vectorized particles (``num_particles`` in Pyro's ELBOs, and every
    estimator and evaluator here) a latent drawn for a batch of B images is ``[S, B,
    latent_dim]``; importance-weighted log p(x) draws ``[K, B, latent_dim]``. Linear layers
    broadcast over such dimensions, but ``nn.Conv2d`` takes exactly ``(batch, C, H, W)``
    (or one unbatched image), so a convolutional decoder fails on ``[S, B, latent_dim]``
    unless the dimensions are folded. Folding is a reshape (no copy for contiguous
    inputs), so the network's weights, results and gradients are those of one call on all
    ``S·B`` rows. ``torch.func.vmap`` would also batch it, but needs the number of extra
    dimensions in advance and refuses in-place buffer updates such as batch norm's.

    The input may also be given flattened, ``[*leading, prod(input_shape)]``: the
    observations ``x`` of this package's models are flattened images ``[..., D]``, so a
    convolutional encoder wrapped with ``input_shape=(C, H, W)`` takes them as they are.

    Args:
        net: the network; called with one tensor ``(n, *input_shape)``, returning a tensor
            ``(n, *out)`` or a tuple/list of them (an encoder's ``(loc, scale)``).
        input_shape: the shape of one input row, e.g. ``(latent_dim,)`` for a decoder or
            ``(C, H, W)`` for an image encoder.

    Raises:
        ValueError: (construction) ``input_shape`` is not a tuple of positive integers;
            (call) the input ends neither in ``input_shape`` nor in its flattened size, or
            an output does not lead with the folded batch size.

    Example::

        decoder = FoldLeadingDims(MyConvDecoder(), (latent_dim,))
        decoder(z)   # z: [S, B, latent_dim] -> [S, B, C, H, W]
    """

    def __init__(self, net: nn.Module, input_shape: Sequence[int]) -> None:
        super().__init__()
        shape = tuple(input_shape) if isinstance(input_shape, Sequence) else None
        if not shape or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape
        ):
            raise ValueError(
                f"input_shape: {input_shape!r}; expected the shape of one input row, a tuple "
                "of positive integers such as (latent_dim,) or (C, H, W)"
            )
        self.net, self.input_shape = net, shape

    def forward(self, x: torch.Tensor):
        leading = self._leading(x)
        rows = math.prod(leading)
        out = self.net(x.reshape(rows, *self.input_shape))
        if isinstance(out, tuple | list):
            return type(out)(self._unfold(o, leading, rows) for o in out)
        return self._unfold(out, leading, rows)

    def _leading(self, x: torch.Tensor) -> tuple[int, ...]:
        """The dimensions of ``x`` before one (possibly flattened) input row."""
        rank = len(self.input_shape)
        if x.dim() >= rank and tuple(x.shape[x.dim() - rank :]) == self.input_shape:
            return tuple(x.shape[: x.dim() - rank])
        if x.dim() >= 1 and x.shape[-1] == math.prod(self.input_shape):
            return tuple(x.shape[:-1])
        raise ValueError(
            f"x: shape {tuple(x.shape)}; expected [..., {', '.join(map(str, self.input_shape))}]"
            f" or [..., {math.prod(self.input_shape)}] (flattened) for this network"
        )

    @staticmethod
    def _unfold(out: torch.Tensor, leading: tuple[int, ...], rows: int) -> torch.Tensor:
        if out.dim() < 1 or out.shape[0] != rows:
            raise ValueError(
                f"net: returned shape {tuple(out.shape)} for {rows} input rows; expected "
                f"({rows}, ...), one output row per input row"
            )
        return out.reshape(*leading, *out.shape[1:])
