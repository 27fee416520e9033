"""A labelled grid of images as a matplotlib ``Figure``, for notebooks and scripts alike.

Rows usually compare one operation across the same columns, e.g. the data x, its
reconstruction E[x | z = E_q z] and decodings of corrupted codes z' = z + ε. The figure
is built without pyplot, so it changes no backend and is not kept open by pyplot: a
notebook shows it when it is a cell's value, a script saves it with ``fig.savefig``.
(:mod:`pyro_vae.plots` writes the fixed set of PNGs of a run folder.)

Image shapes, here and in every figure: ``(H, W)`` is one grey channel; ``(C, H, W)`` is C
channels, drawn as RGB when C = 3, as grey when C = 1, and otherwise as the C channels side
by side in grey (an ``H x C·W`` strip), since no colour map stands for them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure


def check_image_shape(image_shape: Sequence[int], arg: str = "image_shape") -> tuple[int, ...]:
    """``image_shape`` as a tuple of ints, checked to be ``(H, W)`` or ``(C, H, W)``.

    Raises:
        ValueError: naming ``arg``, for any other length or a size below 1.
    """
    shape = tuple(int(s) for s in image_shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(
            f"{arg}: {tuple(image_shape)!r} is not a (height, width) pair or a "
            "(channels, height, width) triple"
        )
    return shape


def pictures(x: torch.Tensor, image_shape: Sequence[int], pixel_max: float) -> np.ndarray:
    """Flattened images ``[N, prod(image_shape)]`` as arrays ``imshow`` draws: ``[N, H, W]``
    grey (one channel) or ``[N, H, W, 3]`` RGB (three), values ``x / pixel_max`` clipped
    to [0, 1]; other channel counts side by side, ``[N, H, C·W]`` (module docstring).

    Raises:
        ValueError: ``image_shape`` is not ``(H, W)`` or ``(C, H, W)``; ``x`` does not hold
            ``prod(image_shape)`` values per image (a model whose observation's parameters
            broadcast over the pixels, one logit for all 64, has a mean of 1 value per
            draw: reshaped, 64 draws made one image, or the reshape failed mid-figure).
    """
    shape = check_image_shape(image_shape)
    pixels = math.prod(shape)
    per_image = math.prod(x.shape[1:]) if x.dim() >= 2 else None
    if per_image != pixels:
        values = "no rows" if per_image is None else f"{per_image} value(s) per image"
        raise ValueError(
            f"x: shape {tuple(x.shape)} has {values}, not the {pixels} pixels of image_shape "
            f"{shape}; expected [N, {pixels}] flattened images (a model's mean image has "
            "fewer values per draw than pixels when its observation's parameters broadcast "
            "over them: there is no image to draw)"
        )
    images = (x.detach().cpu().float().reshape(-1, *shape) / pixel_max).clamp(0, 1).numpy()
    if len(shape) == 2:
        return images
    channels, height, width = shape
    if channels == 1:
        return images[:, 0]
    if channels == 3:
        return images.transpose(0, 2, 3, 1)
    return images.transpose(0, 2, 1, 3).reshape(-1, height, channels * width)


def show(ax, picture: np.ndarray, interpolation: str | None = "nearest") -> None:
    """Draw one of :func:`pictures`' arrays on ``ax``: grey on a fixed [0, 1] scale, RGB
    as it is. ``interpolation`` is matplotlib's (``nearest``: each pixel a block of one
    colour; ``None``: matplotlib's default)."""
    if picture.ndim == 2:
        ax.imshow(picture, cmap="gray", vmin=0, vmax=1, interpolation=interpolation)
    else:
        ax.imshow(picture, interpolation=interpolation)


def _rows(rows: torch.Tensor | Sequence[torch.Tensor], pixels: int) -> list[torch.Tensor]:
    if torch.is_tensor(rows):
        if rows.dim() != 3:
            raise ValueError(
                f"rows: a tensor of shape {tuple(rows.shape)}; expected [rows, columns, "
                f"{pixels}] or a list of [columns, {pixels}] tensors"
            )
        rows = list(rows)
    rows = [torch.as_tensor(r).detach().cpu().float() for r in rows]
    if not rows:
        raise ValueError("rows: no rows to draw; expected at least one [columns, D] tensor")
    for index, row in enumerate(rows):
        if row.dim() != 2 or row.shape[1] != pixels:
            raise ValueError(
                f"rows[{index}]: shape {tuple(row.shape)}; expected [columns, {pixels}] "
                "flattened images of image_shape"
            )
    return rows


def image_grid(
    rows: torch.Tensor | Sequence[torch.Tensor],
    image_shape: Sequence[int],
    pixel_max: float = 1.0,
    row_labels: Sequence[str] | None = None,
    title: str = "",
    cell_inches: float = 0.75,
) -> Figure:
    """Draw ``rows[r][c]`` (a flattened image) at row r, column c: grey levels, or RGB
    for three-channel images.

    Args:
        rows: ``[R, C, D]`` tensor, or R tensors ``[C_r, D]`` (shorter rows leave blanks).
        image_shape: ``(H, W)`` or ``(channels, H, W)`` with their product D (module
            docstring: how channels are drawn).
        pixel_max: the value drawn as white (1 for intensities, L − 1 for L levels);
            values are clipped to [0, pixel_max].
        row_labels: one label per row, written left of it.
        title: the figure's title.
        cell_inches: size of one image in inches.
    """
    shape = check_image_shape(image_shape)
    if not (math.isfinite(pixel_max) and pixel_max > 0):
        raise ValueError(f"pixel_max: {pixel_max!r} is not a positive number")
    rows = _rows(rows, math.prod(shape))
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(
            f"row_labels: {len(row_labels)} labels for {len(rows)} rows; expected one per row"
        )
    columns = max(r.shape[0] for r in rows)
    label_inches = 1.3 if row_labels else 0.0
    fig = Figure(
        figsize=(label_inches + columns * cell_inches, len(rows) * cell_inches + 0.3 * bool(title))
    )
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for r, row in enumerate(rows):
        images = pictures(row, shape, pixel_max)
        for c in range(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(images):
                show(ax, images[c])
        if row_labels:
            axes[r, 0].set_ylabel(
                row_labels[r], rotation=0, ha="right", va="center", fontsize=8, labelpad=4
            )
    if title:
        fig.suptitle(title, fontsize=9)
    top = 1 - 0.35 / fig.get_figheight() if title else 0.99
    fig.subplots_adjust(
        left=label_inches / fig.get_figwidth(),
        right=0.99,
        bottom=0.01,
        top=top,
        wspace=0.05,
        hspace=0.05,
    )
    return fig
