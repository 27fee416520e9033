"""Figures of a fitted model, written as PNG files into a run folder.

Each figure is a ``matplotlib.figure.Figure`` of its own, drawn and saved without pyplot:
importing this module changes no backend and no figure is left open (a PNG needs none).
(:mod:`pyro_vae.image_grid` returns a figure to show instead.) Images are ``(H, W)`` grey
or ``(C, H, W)``, three channels drawn as RGB (:func:`pyro_vae.image_grid.pictures`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pyro_vae.checkpoint import atomic_path
from pyro_vae.image_grid import pictures, show


def _as_images(x: torch.Tensor, image_shape: Sequence[int], pixel_max: float) -> np.ndarray:
    return pictures(x, image_shape, pixel_max)


def mosaic(pictures: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """:func:`~pyro_vae.image_grid.pictures`' arrays ``[N, H, W(, 3)]`` tiled row by row
    into one ``rows x cols`` image, a white gap of about a twelfth of an image between
    cells and white where N < rows·cols: one ``imshow`` draws the grid. (One matplotlib
    Axes per image cost a run folder's figures 9 s of a 10 s digits fit, 208 Axes.)"""
    n, height, width = pictures.shape[:3]
    gap = max(1, round(height / 12))
    tile = np.ones(
        (rows * (height + gap) - gap, cols * (width + gap) - gap) + pictures.shape[3:],
        dtype=pictures.dtype,
    )
    for i in range(min(n, rows * cols)):
        r, c = divmod(i, cols)
        top, left = r * (height + gap), c * (width + gap)
        tile[top : top + height, left : left + width] = pictures[i]
    return tile


def _draw_mosaic(ax, pictures: np.ndarray, rows: int, cols: int, labels=()) -> None:
    """The grid on one Axes, axis off, each of ``labels`` left of its row."""
    tile = mosaic(pictures, rows, cols)
    show(ax, tile, None)
    ax.axis("off")
    row_height = tile.shape[0] / rows
    for r, label in enumerate(labels):
        y = (r + 0.5) * row_height
        ax.text(-0.01 * tile.shape[1], y, label, ha="right", va="center", fontsize=7)


def save_png(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG (100 dpi, tight box) atomically: a killed write leaves the
    previous file. Returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI, bbox_inches="tight")
    return path


def plot_reconstructions(
    x: torch.Tensor,
    x_hat: torch.Tensor,
    image_shape: Sequence[int],
    pixel_max: float,
    path: Path,
    title: str = "",
) -> Path:
    """Originals (top row of each pair) above their reconstructions E[x | z = E_q z]."""
    return save_png(reconstruction_figure(x, x_hat, image_shape, pixel_max, title), path)


def reconstruction_figure(
    x: torch.Tensor,
    x_hat: torch.Tensor,
    image_shape: Sequence[int],
    pixel_max: float,
    title: str = "",
) -> Figure:
    """:func:`plot_reconstructions`' figure, unsaved."""
    originals, recons = (
        _as_images(x, image_shape, pixel_max),
        _as_images(x_hat, image_shape, pixel_max),
    )
    cols = min(len(originals), 12)
    pairs = math.ceil(len(originals) / cols)
    # Row labels sit in a margin left of the first column and the title in one above the
    # grid (inches, fixed), so neither runs into an image whatever the grid's size; axes
    # titles did: "reconstruction" is wider than a column and met the row above.
    label_in, title_in, cell_in = 0.85, 0.35, 0.9
    width, height = label_in + cols * cell_in, title_in + 2 * pairs * cell_in
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((label_in / width, 0.0, 1 - label_in / width, 1 - title_in / height))
    # rows alternate: a row of data, the row of their reconstructions
    blank = np.ones((pairs * cols - len(originals),) + originals.shape[1:], originals.dtype)
    rows = np.concatenate([originals, blank]).reshape((pairs, cols) + originals.shape[1:])
    recon_rows = np.concatenate([recons, blank]).reshape((pairs, cols) + recons.shape[1:])
    interleaved = np.stack([rows, recon_rows], 1).reshape((-1,) + originals.shape[1:])
    _draw_mosaic(ax, interleaved, 2 * pairs, cols, ["data", "reconstruction"] * pairs)
    title = title or "test images and their reconstructions"
    fig.suptitle(title, fontsize=9, y=1 - 0.1 / height, va="top")
    return fig


#: Inches each image of a :func:`plot_samples` grid takes, and the PNG's dots per inch.
_CELL_INCHES, _DPI = 0.8, 100


def _grid_shape(num: int) -> tuple[int, int]:
    """(rows, columns) of :func:`plot_samples`'s grid of ``num`` images: about square."""
    cols = math.ceil(math.sqrt(num))
    return math.ceil(num / cols), cols


def check_grid_size(num: int, arg: str = "num") -> None:
    """Refuse a :func:`plot_samples` grid of ``num`` images whose figure exceeds the
    pixels Pillow opens (``PIL.Image.MAX_IMAGE_PIXELS``, its decompression-bomb limit),
    before any is drawn (tester CK: ``--num 1000000000000`` ended in PyTorch's failure to
    allocate 8 TB; 20,000 took 3.3 GB).

    Raises:
        ValueError: naming ``arg``, the value, the grid's pixels and the most it takes."""
    from PIL import Image

    def pixels(n: int) -> int:
        rows, cols = _grid_shape(n)
        return rows * cols * round(_CELL_INCHES * _DPI) ** 2

    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or pixels(num) <= limit:
        return
    most = math.isqrt(limit // round(_CELL_INCHES * _DPI) ** 2) ** 2
    while pixels(most + 1) <= limit:
        most += 1
    raise ValueError(
        f"--{arg}: {num:,} images make a figure of {pixels(num):,} pixels, more than the "
        f"{limit:,} Pillow opens (PIL.Image.MAX_IMAGE_PIXELS); expected at most {most:,}"
    )


def plot_samples(
    x: torch.Tensor, image_shape: Sequence[int], pixel_max: float, path: Path, title: str = ""
) -> Path:
    """A grid of images, e.g. E[x | z] for z drawn from the prior (``check_grid_size``
    says how many it takes)."""
    images = _as_images(x, image_shape, pixel_max)
    rows, cols = _grid_shape(len(images))
    fig = Figure(figsize=(cols * _CELL_INCHES, rows * _CELL_INCHES))
    _draw_mosaic(fig.subplots(), images, rows, cols)
    fig.suptitle(title or "samples: E[x | z], z ~ p(z)", fontsize=9)
    return save_png(fig, path)


def plot_image_rows(
    images: torch.Tensor,
    image_shape: Sequence[int],
    pixel_max: float,
    path: Path,
    row_labels: Sequence[str] = (),
    title: str = "",
) -> Path:
    """Rows of images, ``[R, C, D]`` (a latent traversal or interpolation), each row with
    its label on the left."""
    rows, cols = images.shape[:2]
    pictures = _as_images(images.reshape(rows * cols, -1), image_shape, pixel_max)
    fig = Figure(figsize=(cols * 0.75 + 1.0, rows * 0.78 + 0.4))
    _draw_mosaic(fig.subplots(), pictures, rows, cols, row_labels)
    fig.suptitle(title, fontsize=9)
    return save_png(fig, path)


def epoch_axis(axis) -> None:
    """Label ``axis`` (an ``ax.xaxis``) "epoch", with integer ticks only: epochs are
    counts. ``min_n_ticks=1``: with fewer than two integers in view (a run of one epoch,
    its x-limits 0.945..1.055), ``MaxNLocator(integer=True)`` falls back to fractional
    ticks."""
    axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axis.set_label_text("epoch")


def plot_elbo_curves(
    history: Sequence[dict[str, Any]],
    path: Path,
    test: dict[str, float] | None = None,
    ylabel: str | None = None,
    train: str = "train",
    validation: str = "validation",
) -> Path:
    """Train and validation ELBO per epoch, with the test ELBO / log-likelihood as lines;
    ``train``: what the training curve is called ("train objective" where it is not the
    ELBO: β, free bits, a model's training terms such as M2's α term, tester BP);
    ``validation``: what the validation curve is called (a local guide's is the training
    set's).
    ``ylabel`` None: "ELBO per datapoint (nats)", or "nats per datapoint" where the
    training curve is not the ELBO (the legend names each curve)."""
    if ylabel is None:
        ylabel = "ELBO per datapoint (nats)" if train == "train" else "nats per datapoint"
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r["train_elbo"] for r in history], label=f"{train} (running mean)")
    if history and "val_elbo" in history[0]:
        ax.plot(epochs, [r["val_elbo"] for r in history], label=validation)
    for key, value in (test or {}).items():
        ax.axhline(value, ls="--", lw=1, color="gray" if "elbo" in key else "black", label=key)
    epoch_axis(ax.xaxis)
    ax.set_ylabel(ylabel)
    finite = [r[k] for r in history for k in ("train_elbo", "val_elbo") if k in r]
    if len(finite) > 4:
        lo, hi = np.percentile(finite, [5, 100])
        pad = 0.1 * (hi - lo) + 1e-3
        extra = list((test or {}).values())
        ax.set_ylim(min([lo, *extra]) - pad, max([hi, *extra]) + pad)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)


def plot_latent(
    z: torch.Tensor,
    labels: torch.Tensor,
    path: Path,
    title: str = "",
    classes: Sequence[str] | int | None = None,
    points: str = "test images",
) -> Path:
    """E_q[z | x] of test points coloured by label (first two principal axes if dim > 2);
    see :func:`latent_figure`."""
    return save_png(latent_figure(z, labels, title, classes, points), path)


def latent_figure(
    z: torch.Tensor,
    labels: torch.Tensor,
    title: str = "",
    classes: Sequence[str] | int | None = None,
    points: str = "test images",
) -> Figure:
    """:func:`plot_latent`'s figure, unsaved: one colour per class and a colour bar of
    the classes, ticked with their names.

    ``z``: ``[N, L]`` latent means; ``labels``: ``[N]`` integer labels. ``classes``: the
    class names, label c naming ``classes[c]`` (a table's label values, an image folder's
    sub-folders), or their number, or ``None`` (labels 0..max). Each point is coloured by
    its class index (:func:`_class_indices`): its label where every label is one of
    0..C−1, else its label's position among the sorted distinct labels (−1 and 1 are two
    classes, neither in class 0's colour), and each class is named by its label. Up to 10
    classes take tab10's colours and up to 20 tab20's, one colour and one tick each; more
    take a continuous map, the bar ticked at integer class indices (a fixed 10-colour map
    drew every class from 9 upward as "9", and a 3-class table with a 0..9 bar: tester).
    ``points``: what a point is, for the title ("test rows" for a table).
    """
    import matplotlib
    from matplotlib.colors import ListedColormap
    from matplotlib.ticker import FuncFormatter

    z_np = z.detach().cpu().numpy()
    axis = "z"
    if z_np.shape[1] > 2:
        from sklearn.decomposition import PCA

        z_np = PCA(n_components=2).fit_transform(z_np)
        axis = "principal axis"
    elif z_np.shape[1] == 1:
        z_np = np.column_stack([z_np[:, 0], np.zeros(len(z_np))])
    index, names = _class_indices(labels.cpu().numpy().reshape(-1), classes)
    count = len(names)
    named = classes is not None and not isinstance(classes, int)
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    if count <= 20:
        palette = matplotlib.colormaps["tab10" if count <= 10 else "tab20"]
        cmap, ticks = ListedColormap(palette.colors[:count]), list(range(count))
        low, high = -0.5, count - 0.5
    else:
        cmap, ticks, low, high = matplotlib.colormaps["turbo"], None, 0, count - 1
    drawn = ax.scatter(
        z_np[:, 0], z_np[:, 1], c=index, cmap=cmap, s=6, alpha=0.8, vmin=low, vmax=high
    )
    bar = fig.colorbar(drawn, ax=ax, ticks=ticks, label="class" if named else "label")
    if ticks is None:
        bar.set_label("class index" if named else "label")
        bar.locator = MaxNLocator(integer=True)
        if not named:  # positions are not the labels where a label is negative
            bar.formatter = FuncFormatter(
                lambda v, _: names[int(v)] if float(v).is_integer() and 0 <= v < count else ""
            )
        bar.update_ticks()
    else:
        bar.set_ticks(ticks, labels=names)
    ax.set_xlabel(f"{axis} 1")
    ax.set_ylabel(f"{axis} 2")
    ax.set_title(title or f"latent means E_q[z | x] of {points}", fontsize=9)
    return fig


def _class_indices(
    labels: np.ndarray, classes: Sequence[str] | int | None = None
) -> tuple[np.ndarray, list[str]]:
    """Each label's class index, ``[N]`` int, and each class's name, ``[C]``.

    Labels all in 0..C−1 (C: the number of ``classes``, or the largest label plus one
    where that is more) are the indices themselves, so a class absent from these points
    keeps its colour; named ``classes[c]`` where ``classes`` names them, else ``"c"``.
    Otherwise (a negative label) a label's index is its position among the sorted distinct
    labels, named by the label: a colour map's ``vmin`` clipped −1 into class 0's colour
    (tester)."""
    names = None if classes is None or isinstance(classes, int) else [str(c) for c in classes]
    given = len(names) if names is not None else (classes or 0)
    if labels.size and labels.min() < 0:
        values = np.unique(labels)
        index = np.searchsorted(values, labels)
    else:
        values = np.arange(max(given, int(labels.max()) + 1 if labels.size else 1))
        index = labels
    return index, [
        names[v] if names is not None and 0 <= v < len(names) else str(v) for v in values.tolist()
    ]


def _snr_bars(ax: Any, snrs: Sequence[float], floor: float = 0.0) -> None:
    """Horizontal SNR bars; an infinite SNR (a gradient of zero variance) is drawn hatched
    out to the axis' end and labelled "∞", a nan (zero mean and variance) labelled "n/a":
    both drew no bar, like an SNR of 0 (tester EW)."""
    finite = [v for v in snrs if math.isfinite(v)]
    end = 1.15 * max([*finite, floor]) or 1.0  # past the finite bars and the 1/√n line
    for row, value in enumerate(snrs):
        if math.isfinite(value):
            ax.barh(row, value, color="tab:blue")
        elif value == math.inf:
            ax.barh(row, end, color="tab:blue", alpha=0.4, hatch="//")
            ax.text(end, row, " ∞ (zero variance)", va="center", fontsize=8)
        else:
            ax.text(0, row, " n/a (zero mean and variance)", va="center", fontsize=8)
    ax.set_ylim(-0.5, len(snrs) - 0.5)  # a row of text only still has its place
    if len(finite) < len(snrs):
        ax.set_xlim(0, 1.9 * end)  # room for the labels


def _variance_bars(ax, variances: Sequence[float]) -> None:
    """Variances as bars on a log scale; a variance of exactly 0 (a group the estimator
    leaves unmoved, or a gradient the same in every draw), which a log scale cannot draw,
    labelled "0" at the axis' start, and a nan "n/a" (such a row was blank, as the SNR
    panel's infinite one was: tester EW)."""
    positive = [v for v in variances if math.isfinite(v) and v > 0]
    low, high = (min(positive), max(positive)) if positive else (1.0, 1.0)
    ax.set_xscale("log")
    ax.set_xlim(low / 10, high * 10)
    for row, value in enumerate(variances):
        if math.isfinite(value) and value > 0:
            ax.barh(row, value, color="tab:red")
        else:
            words = " 0 (the same gradient every draw)" if value == 0 else " n/a"
            ax.text(low / 10, row, words, va="center", fontsize=8)
    ax.set_ylim(-0.5, len(variances) - 0.5)


def plot_gradient_variance(
    rows: Sequence[dict[str, Any]], path: Path, group: str = "guide", num_draws: int | None = None
) -> Path:
    """Bar charts of one parameter group's gradient variance (log scale) and SNR (linear:
    an SNR below the draws' resolution reads as 0) per estimator; ``num_draws`` n, where
    given, marks 1/√n, about the smallest SNR n draws resolve
    (:mod:`pyro_vae.diagnostics.gradient_variance`)."""
    rows = [r for r in rows if r["group"] == group]
    labels = [r["estimator"] for r in rows]
    fig = Figure(figsize=(10, 0.45 * len(rows) + 1.6))
    left, right = fig.subplots(1, 2)
    _variance_bars(left, [r["variance"] for r in rows])
    left.set_xlabel(f"variance of the {group} gradient (trace of covariance)")
    _snr_bars(right, [r["snr"] for r in rows], num_draws**-0.5 if num_draws else 0.0)
    right.set_xlabel("signal-to-noise ratio ‖E g‖ / √variance")
    if num_draws:
        right.axvline(num_draws**-0.5, color="grey", linestyle="--", linewidth=1)
        right.set_xlabel(f"signal-to-noise ratio ‖E g‖ / √variance (dashed: 1/√{num_draws})")
    left.set_yticks(range(len(labels)), labels)
    right.set_yticks(range(len(labels)), [""] * len(labels))
    for ax in (left, right):
        ax.invert_yaxis()
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle("gradient estimators at fixed parameters", fontsize=10)
    return save_png(fig, path)
