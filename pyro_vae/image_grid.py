"""A labelled grid of images as a matplotlib ``Figure``, for notebooks and scripts alike.

Rows usually compare one operation across the same columns, e.g. the data x, its
reconstruction E[x | z = E_q z] and decodings of corrupted codes z' = z + ε. The figure
is built without pyplot, so it changes no backend and is not kept open by pyplot: a
notebook shows it when it is a cell's value, a script saves it with ``fig.savefig``.
(:mod:`pyro_vae.plots` writes the fixed set of PNGs of a run folder.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from matplotlib.figure import Figure


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
    """Draw ``rows[r][c]`` (a flattened image) at row r, column c, in grey levels.

    Args:
        rows: ``[R, C, D]`` tensor, or R tensors ``[C_r, D]`` (shorter rows leave blanks).
        image_shape: ``(H, W)`` with H·W = D.
        pixel_max: the value drawn as white (1 for intensities, L − 1 for L levels);
            values are clipped to [0, pixel_max].
        row_labels: one label per row, written left of it.
        title: the figure's title.
        cell_inches: size of one image in inches.
    """
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"image_shape: {image_shape!r} is not a (height, width) pair")
    if not (math.isfinite(pixel_max) and pixel_max > 0):
        raise ValueError(f"pixel_max: {pixel_max!r} is not a positive number")
    rows = _rows(rows, shape[0] * shape[1])
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
        images = (row / pixel_max).clamp(0, 1).reshape(-1, *shape).numpy()
        for c in range(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(images):
                ax.imshow(images[c], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
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
