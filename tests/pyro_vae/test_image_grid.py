import io

import matplotlib
import pytest
import torch
from matplotlib.figure import Figure

from pyro_vae.image_grid import image_grid


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
        ({"pixel_max": 0.0}, "pixel_max: 0.0"),
        ({"row_labels": ["only one"]}, "row_labels: 1 labels for 2 rows"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    arguments = {"rows": torch.rand(2, 3, 4), "image_shape": (2, 2)} | kwargs
    with pytest.raises(ValueError, match=message):
        image_grid(**arguments)
