import io

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from pyro_vae.image_grid import image_grid, pictures


def drawn(fig, columns, r, c):
    """The array shown at row r, column c of a grid (None for a blank cell)."""
    images = fig.axes[r * columns + c].get_images()
    return images[0].get_array() if images else None


def test_rows_columns_scaling_and_labels():
    backend = matplotlib.get_backend()
    x = torch.arange(2 * 3 * 6, dtype=torch.float32).reshape(2, 3, 6)
    fig = image_grid(x, (2, 3), pixel_max=10.0, row_labels=["a", "b"], title="t")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 6
    shown = drawn(fig, 3, 1, 2)
    assert shown.shape == (2, 3)
    expected = (x[1, 2] / 10).clamp(0, 1).reshape(2, 3)
    assert torch.allclose(torch.as_tensor(shown.data), expected)
    assert [fig.axes[i].get_ylabel() for i in (0, 3)] == ["a", "b"]
    assert fig._suptitle.get_text() == "t"
    assert matplotlib.get_backend() == backend  # builds without pyplot or a backend switch
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert buffer.getvalue()[:4] == b"\x89PNG"


def test_rows_of_different_lengths_leave_blanks():
    fig = image_grid([torch.rand(4, 4), torch.rand(2, 4)], (2, 2))
    assert drawn(fig, 4, 1, 1) is not None
    assert drawn(fig, 4, 1, 2) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rows": torch.rand(3, 4)}, r"rows: a tensor of shape \(3, 4\)"),
        ({"rows": [torch.rand(2, 5)]}, r"rows\[0\]: shape \(2, 5\); expected \[columns, 4\]"),
        ({"rows": []}, "rows: no rows"),
        ({"image_shape": (4,)}, "image_shape"),
        ({"image_shape": (2, 1, 2, 1)}, r"image_shape: \(2, 1, 2, 1\)"),
        ({"pixel_max": 0.0}, "pixel_max: 0.0"),
        ({"row_labels": ["only one"]}, "row_labels: 1 labels for 2 rows"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    arguments = {"rows": torch.rand(2, 3, 4), "image_shape": (2, 2)} | kwargs
    with pytest.raises(ValueError, match=message):
        image_grid(**arguments)


# A 2x2 RGB image, (C, H, W) flattened: red, green / blue, yellow, in 0..255.
QUADRANTS = {(0, 0): (255, 0, 0), (0, 1): (0, 255, 0), (1, 0): (0, 0, 255), (1, 1): (255, 255, 51)}


def _colour_image() -> torch.Tensor:
    image = torch.zeros(3, 2, 2)
    for (i, j), rgb in QUADRANTS.items():
        image[:, i, j] = torch.tensor(rgb, dtype=torch.float32)
    return image.reshape(1, 1, 12)


def _rendered(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3], canvas.get_width_height()[1]


def test_a_colour_image_is_drawn_in_its_own_rgb_at_each_pixel():
    fig = image_grid(_colour_image(), (3, 2, 2), pixel_max=255.0, cell_inches=2.0)
    pixels, height = _rendered(fig)
    box = fig.axes[0].get_window_extent()
    for (i, j), rgb in QUADRANTS.items():
        # the centre of pixel (i, j): image row i counts down from the top of the axes
        x = box.x0 + (j + 0.5) * box.width / 2
        y = box.y1 - (i + 0.5) * box.height / 2
        assert tuple(pixels[height - 1 - round(y), round(x)]) == rgb, (i, j)


def test_one_channel_images_are_grey_and_other_counts_sit_side_by_side():
    x = torch.rand(2, 12)
    grey = pictures(x, (1, 3, 4), 1.0)
    assert grey.shape == (2, 3, 4) and np.array_equal(grey, pictures(x, (3, 4), 1.0))
    two = pictures(x, (2, 2, 3), 1.0)  # channels side by side: [N, H, C·W]
    assert two.shape == (2, 2, 6)
    assert np.array_equal(two[:, :, 3:], x.reshape(2, 2, 2, 3)[:, 1].numpy())
    rgb = pictures(torch.arange(12.0).reshape(1, 12), (3, 2, 2), 11.0)
    assert rgb.shape == (1, 2, 2, 3) and rgb[0, 1, 0, 2] == 10 / 11  # channel 2, row 1, col 0


@pytest.mark.parametrize("rows", [24, 64])
def test_a_mean_of_fewer_values_than_pixels_is_refused_naming_both(rows):
    # tester U: a decoder of 1 logit broadcast over 64 pixels has a mean of 1 value per
    # draw; 24 of them failed torch's reshape mid-fit (a RuntimeError, a traceback), and 64
    # of them reshaped, silently, into one 8x8 "image" of 64 draws
    x = torch.rand(rows, 1)
    with pytest.raises(ValueError, match=rf"x: shape \({rows}, 1\) has 1 value\(s\) per image, "):
        pictures(x, (8, 8), 1.0)
    with pytest.raises(ValueError, match=r"not the 12 pixels of image_shape \(3, 2, 2\)"):
        pictures(torch.rand(4, 4), (3, 2, 2), 1.0)
    assert pictures(torch.rand(2, 8, 8), (8, 8), 1.0).shape == (2, 8, 8)  # unflattened: fine
