"""The run folder's figures: PNGs drawn on figures of their own, with no backend switch."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from pyro_vae.plots import (
    _snr_bars,
    _variance_bars,
    check_grid_size,
    latent_figure,
    mosaic,
    plot_elbo_curves,
    plot_gradient_variance,
    plot_image_rows,
    plot_latent,
    plot_reconstructions,
    plot_samples,
    reconstruction_figure,
    save_png,
)


def _size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_each_figure_is_written_as_a_png(tmp_path):
    x = torch.rand(14, 16)
    assert plot_reconstructions(x, 1 - x, (4, 4), 1.0, tmp_path / "r.png") == tmp_path / "r.png"
    width, height = _size(tmp_path / "r.png")
    assert width > height  # 12 columns, two rows of pairs
    plot_samples(255 * x, (4, 4), 255.0, tmp_path / "s.png", title="samples")
    history = [{"epoch": i, "train_elbo": -30.0 + i, "val_elbo": -31.0 + i} for i in range(8)]
    plot_elbo_curves(history, tmp_path / "e.png", {"test_elbo": -24.0, "log_px": -23.0})
    plot_elbo_curves([{"epoch": 1, "train_elbo": -3.0}], tmp_path / "e1.png")  # no validation
    for dim in (1, 2, 3):  # one latent, a plane, principal axes
        plot_latent(torch.randn(50, dim), torch.randint(0, 10, (50,)), tmp_path / f"l{dim}.png")
    rows = [
        {"group": "guide", "estimator": "trace", "variance": 1.0, "snr": 2.0},
        {"group": "guide", "estimator": "score", "variance": 50.0, "snr": 0.0},  # unresolved
        {"group": "model", "estimator": "trace", "variance": 3.0, "snr": 1.0},
    ]
    plot_gradient_variance(rows, tmp_path / "g.png", num_draws=200)
    for name in ("s", "e", "e1", "l1", "l2", "l3", "g"):
        assert min(_size(tmp_path / f"{name}.png")) > 100, name


def test_an_infinite_snr_draws_a_labelled_bar_and_a_nan_a_label():
    # tester EW: a gradient of zero variance (SNR inf) drew no bar, like an unresolved 0
    ax = Figure().subplots()
    _snr_bars(ax, [2.0, math.inf, math.nan, 0.0], floor=200**-0.5)
    widths = [patch.get_width() for patch in ax.patches]
    assert widths == [2.0, pytest.approx(1.15 * 2.0), 0.0]  # the finite bars, and ∞'s
    texts = [t.get_text() for t in ax.texts]
    assert texts == [" ∞ (zero variance)", " n/a (zero mean and variance)"]
    ax = Figure().subplots()
    _snr_bars(ax, [0.01, math.inf], floor=200**-0.5)  # past the 1/√n line, not the 0.01
    assert ax.patches[1].get_width() == pytest.approx(1.15 * 200**-0.5)


def test_a_zero_variance_is_labelled_on_the_log_panel():
    """A variance of exactly 0 has no place on a log axis: its row says "0" where a bar
    would start; the positive ones are bars and set the axis' range."""
    ax = Figure().subplots()
    _variance_bars(ax, [4.0, 0.0, 0.25, math.nan])
    assert [patch.get_width() for patch in ax.patches] == [4.0, 0.25]
    assert [t.get_text() for t in ax.texts] == [" 0 (the same gradient every draw)", " n/a"]
    assert ax.get_xlim() == pytest.approx((0.025, 40.0))
    ax = Figure().subplots()
    _variance_bars(ax, [0.0])  # none to draw: still a row, no warning of a log of 0
    assert ax.texts[0].get_text().startswith(" 0")


# Colours no grey level can be: each figure of colour images must show them as they are.
RED, TEAL = (204, 51, 0), (0, 102, 153)


def _count(path, rgb):
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    return int((pixels == np.array(rgb)).all(-1).sum())


def test_colour_images_are_drawn_in_colour_in_every_image_figure(tmp_path):
    red = torch.tensor(RED, dtype=torch.float32)[:, None, None].expand(3, 6, 6).reshape(1, -1)
    teal = torch.tensor(TEAL, dtype=torch.float32)[:, None, None].expand(3, 6, 6).reshape(1, -1)
    x, x_hat = red.expand(4, -1), teal.expand(4, -1)
    plot_reconstructions(x, x_hat, (3, 6, 6), 255.0, tmp_path / "r.png")
    plot_samples(x, (3, 6, 6), 255.0, tmp_path / "s.png")
    plot_image_rows(torch.stack([x, x_hat]), (3, 6, 6), 255.0, tmp_path / "t.png", ["a", "b"])
    # each 6x6 image is drawn at least 40 pixels wide: 4 uniform images of each colour
    # leave well over 4 * 30 * 30 pixels of exactly that colour
    assert _count(tmp_path / "r.png", RED) > 3600 and _count(tmp_path / "r.png", TEAL) > 3600
    assert _count(tmp_path / "s.png", RED) > 3600
    assert _count(tmp_path / "t.png", RED) > 3600 and _count(tmp_path / "t.png", TEAL) > 3600
    plot_samples(x.reshape(4, 3, 36)[:, :1].reshape(4, 36), (6, 6), 255.0, tmp_path / "g.png")
    grey = (RED[0],) * 3  # one channel: the red channel's level, drawn grey
    assert _count(tmp_path / "g.png", grey) > 3600 and _count(tmp_path / "g.png", RED) == 0


def test_save_png_replaces_a_file_atomically(tmp_path):
    from matplotlib.figure import Figure

    path = tmp_path / "f.png"
    path.write_text("an older file")
    fig = Figure(figsize=(2, 1))
    fig.subplots().plot([0, 1])
    assert save_png(fig, path) == path and min(_size(path)) > 50  # a tight box, 100 dpi
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]  # no temporary left behind


def test_importing_the_library_keeps_the_backend_and_loads_no_pyplot():
    # A notebook's backend is its own: the library must not switch it on import, nor
    # import pyplot, which would pick one. (ArviZ imports pyplot itself, so the ArviZ
    # modules of pyro_vae.diagnostics load on first use, not with the package.) One
    # interpreter imports them all: any one of them importing pyplot would show.
    modules = [
        "pyro_vae",
        "pyro_vae.plots",
        "pyro_vae.image_grid",
        "pyro_vae.diagnostics",
        "pyro_vae.amortization",
        "pyro_vae.estimators",
    ]
    code = (
        "import sys, matplotlib\n"
        f"import {', '.join(modules)}\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
    )
    env = {**os.environ, "MPLBACKEND": "svg"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_the_report_leaves_no_pyplot_figure_open(tmp_path):
    import matplotlib.pyplot as plt

    from pyro_vae.diagnostics.psis import PointwiseKhat
    from pyro_vae.diagnostics.report import plot_khat

    before = plt.get_fignums()
    plot_khat(PointwiseKhat(torch.linspace(-1, 1, 50).numpy(), 100), tmp_path / "k.png")
    plot_reconstructions(torch.rand(3, 4), torch.rand(3, 4), (2, 2), 1.0, tmp_path / "r.png")
    assert plt.get_fignums() == before


@pytest.mark.parametrize(("draws", "threshold"), [(21, 1 - 1 / math.log10(21)), (5000, None)])
def test_the_khat_figure_draws_the_threshold_of_its_draws_below_0_7(draws, threshold):
    # tester FC: for S = 21 the command printed the share above 0.24, the figure showed
    # only 0.5 and 0.7 (Vehtari et al. 2024's min(1 − 1/log10 S, 0.7), computed here)
    from pyro_vae.diagnostics.psis import PointwiseKhat
    from pyro_vae.diagnostics.report import khat_figure

    khat = np.array([0.1, 0.3, 0.6, 0.8])
    fig = khat_figure(PointwiseKhat(khat, draws))
    left = fig.axes[0]
    drawn = sorted(round(float(line.get_ydata()[0]), 6) for line in left.get_lines())
    title = fig._suptitle.get_text()
    if threshold is None:
        assert drawn == [0.5, 0.7] and "above 0.5" in title and "above 0.24" not in title
    else:
        assert drawn == [round(threshold, 6), 0.5, 0.7]
        assert f"{100 * (khat > threshold).mean():.1f}% above {threshold:.2f}" in title
    assert all(tick == int(tick) for tick in left.get_xticks())  # datapoints are whole


@pytest.mark.parametrize("n, shape", [(3, (28, 28)), (24, (8, 8)), (24, (3, 32, 32))])
def test_reconstruction_labels_and_title_overlap_no_image(n, shape):
    # Measured where matplotlib draws them: every text's box against every image's box.
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    x = torch.rand(n, int(np.prod(shape)), generator=torch.Generator().manual_seed(0))
    fig = reconstruction_figure(x, 0.5 * x, shape, 1.0)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    images = [ax.get_window_extent(renderer) for ax in fig.axes if ax.images]
    texts = [t for ax in fig.axes for t in ax.texts] + list(fig.texts)
    assert len(texts) == 2 * -(-n // 12) + 1  # a label per row, and the title
    boxes = [t.get_window_extent(renderer) for t in texts]
    assert not [
        (t.get_text(), i)
        for t, b in zip(texts, boxes, strict=True)
        for i in images
        if b.overlaps(i)
    ]
    assert all(b.x0 >= 0 and b.y1 <= fig.bbox.y1 for b in boxes)  # inside the figure


def test_a_mosaic_puts_each_image_in_its_cell_with_white_between_and_after():
    images = np.random.default_rng(0).random((5, 12, 6, 3))  # five 12x6 RGB images
    tile = mosaic(images, rows=2, cols=3)
    gap = 1  # about a twelfth of the height
    assert tile.shape == (2 * 12 + gap, 3 * 6 + 2 * gap, 3)
    for i in range(5):
        r, c = divmod(i, 3)
        top, left = r * (12 + gap), c * (6 + gap)
        assert np.array_equal(tile[top : top + 12, left : left + 6], images[i])
    assert (tile[12] == 1).all() and (tile[:, 6] == 1).all()  # the gaps
    assert (tile[13:, 2 * 7 :] == 1).all()  # the sixth cell, with no image


def test_an_image_grid_is_one_axes_whatever_its_size():
    # one Axes per image made a run folder's figures 9 s of a 10 s digits fit (208 Axes)
    x = torch.rand(40, 64)
    figure = reconstruction_figure(x, 1 - x, (8, 8), 1.0)
    assert len(figure.axes) == 1


def test_a_mean_that_is_not_an_image_is_refused_before_a_file_is_written(tmp_path):
    # tester U: samples.png of a model whose mean broadcasts 1 value over the pixels
    path = tmp_path / "samples.png"
    with pytest.raises(ValueError, match="1 value\\(s\\) per image, not the 64 pixels"):
        plot_samples(torch.rand(64, 1), (8, 8), 1.0, path)
    with pytest.raises(ValueError, match="not the 64 pixels"):
        plot_image_rows(torch.rand(2, 3, 1), (8, 8), 1.0, path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("epochs", [1, 2, 40])
def test_the_elbo_curves_epoch_axis_has_integer_ticks(tmp_path, monkeypatch, epochs):
    # a run of one epoch got ticks 0.945, 0.96, ... (MaxNLocator's integer=True wants two
    # integers in view, and the default locator none)
    import pyro_vae.plots as plots

    drawn = []
    monkeypatch.setattr(plots, "save_png", lambda fig, path: drawn.append(fig) or path)
    history = [
        {"epoch": i + 1, "train_elbo": -30.0 + i, "val_elbo": -31.0 + i} for i in range(epochs)
    ]
    plot_elbo_curves(history, tmp_path / "e.png")
    assert_integer_epoch_ticks(drawn[0].axes[0])


def test_the_training_curve_is_called_the_objective_where_it_is_not_the_elbo(tmp_path, monkeypatch):
    # tester BP: M2's training curve, its α term included, was drawn as the ELBO's
    import pyro_vae.plots as plots

    drawn = []
    monkeypatch.setattr(plots, "save_png", lambda fig, path: drawn.append(fig) or path)
    history = [{"epoch": 1, "train_elbo": -200.0, "val_elbo": -40.0}]
    plot_elbo_curves(history, tmp_path / "e.png")
    plot_elbo_curves(history, tmp_path / "o.png", train="train objective")
    labels = [[t.get_text() for t in fig.axes[0].get_legend().get_texts()] for fig in drawn]
    assert labels == [["train (running mean)", "validation"],
                      ["train objective (running mean)", "validation"]]  # fmt: skip
    # and the y-axis does not call both curves the ELBO
    assert [fig.axes[0].get_ylabel() for fig in drawn] == [
        "ELBO per datapoint (nats)", "nats per datapoint"]  # fmt: skip


def assert_integer_epoch_ticks(ax) -> None:
    """``ax``'s x-axis is "epoch", every tick an integer and one at least in view."""
    ax.figure.canvas.draw()
    assert ax.get_xlabel() == "epoch"
    ticks = ax.get_xticks()
    lo, hi = ax.get_xlim()
    assert all(float(t).is_integer() for t in ticks), list(ticks)
    assert any(lo <= t <= hi for t in ticks)


def _bar_labels(fig):
    bar = fig.axes[1]
    return [t.get_text() for t in bar.get_yticklabels()], list(bar.get_yticks())


def test_the_latent_plot_gives_each_class_its_own_colour_and_its_name():
    # tester: tab10 over -0.5..9.5 drew every class from 9 upward in 9's colour, a 3-class
    # table with a 0..9 bar, and class names as 0..9
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(60, 2, generator=generator)
    labels = torch.arange(60) % 15
    fig = latent_figure(z, labels, classes=15, points="test rows")
    drawn = fig.axes[0].collections[0]
    colours = {tuple(c) for c in drawn.to_rgba(drawn.get_array())}
    assert len(colours) == 15  # one per class, none shared
    assert _bar_labels(fig)[1] == list(range(15))
    assert fig.axes[0].get_title() == "latent means E_q[z | x] of test rows"
    names = latent_figure(z[:9], torch.tensor([0, 1, 2] * 3), classes=["cat", "dog", "eel"])
    assert _bar_labels(names) == (["cat", "dog", "eel"], [0, 1, 2])
    assert "test images" in names.axes[0].get_title()
    many = latent_figure(z, torch.arange(60) % 30, classes=30)  # a continuous map
    drawn = many.axes[0].collections[0]
    assert len({tuple(c) for c in drawn.to_rgba(drawn.get_array())}) == 30
    low, high = many.axes[1].get_ylim()
    assert (low, high) == (0, 29)  # class indices, ticked at integers
    assert all(float(t).is_integer() for t in _bar_labels(many)[1])


def test_negative_labels_are_coloured_by_their_class_and_named_by_their_label():
    """Tester (F6): label −1 was drawn in class 0's colour (vmin clipped it there)."""
    import matplotlib

    z = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([-1, 1, 0, 1, 0, -1])
    fig = latent_figure(z, labels, classes=2)  # what fit passes: the largest label + 1
    drawn = fig.axes[0].collections[0]
    tab10 = matplotlib.colormaps["tab10"].colors
    expected = [(*tab10[label + 1], 0.8) for label in labels.tolist()]  # -1, 0, 1: 0, 1, 2
    np.testing.assert_allclose(drawn.to_rgba(drawn.get_array(), alpha=0.8), expected)
    assert _bar_labels(fig) == (["-1", "0", "1"], [0, 1, 2])
    # more classes than tab20 holds: the bar's integer ticks are named by the labels
    many = latent_figure(
        torch.randn(30, 2, generator=torch.Generator().manual_seed(1)), torch.arange(30) - 15
    )
    drawn = many.axes[0].collections[0]
    assert len({tuple(c) for c in drawn.to_rgba(drawn.get_array())}) == 30
    many.canvas.draw()
    shown = [(text, t) for text, t in zip(*_bar_labels(many), strict=True) if 0 <= t <= 29]
    assert shown and all(text == str(int(t) - 15) for text, t in shown)  # position t: t − 15


def test_a_sample_grid_beyond_the_pixels_pillow_opens_is_refused(monkeypatch):
    """Tester CK: ``sample --num 1000000000000`` failed to allocate 8 TB. Each image takes
    0.8 in at 100 dpi, 80 x 80 = 6,400 pixels of the figure; with Pillow's limit at four
    images' worth, a 2 x 2 grid is drawn and 5 images (2 x 3 cells) are refused."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4 * 6400)
    check_grid_size(4)
    with pytest.raises(ValueError, match="--num: 5 images make a figure of 38,400 pixels, more "
                       "than the 25,600 Pillow opens .*; expected at most 4"):  # fmt: skip
        check_grid_size(5)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the limit turned off: no refusal
    check_grid_size(10**12)
