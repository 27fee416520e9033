import gzip

import numpy as np
import pytest

from pyro_vae.idx import IDXFormatError, images_channels_first, read_idx, write_idx


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_round_trip(tmp_path, dtype, name):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((5, 4, 3)) * 50).astype(dtype)
    write_idx(tmp_path / name, array)
    back = read_idx(tmp_path / name)
    assert back.dtype == np.dtype(dtype) and back.shape == (5, 4, 3)
    np.testing.assert_array_equal(back, array)


def test_header_is_big_endian_mnist_layout(tmp_path):
    write_idx(tmp_path / "f", np.zeros((2, 28, 28), np.uint8))
    raw = (tmp_path / "f").read_bytes()
    assert raw[:4] == bytes([0, 0, 0x08, 3])
    assert raw[4:16] == bytes([0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28])
    assert len(raw) == 16 + 2 * 28 * 28


def test_gzip_is_detected_from_content_not_name(tmp_path):
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    write_idx(tmp_path / "plain.gz", array, compress=False)
    write_idx(tmp_path / "zipped", array, compress=True)
    np.testing.assert_array_equal(read_idx(tmp_path / "plain.gz"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "zipped"), array)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\x00\x00", "too short"),
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x00", "magic number"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "element type"),
        (b"\x00\x00\x08\x00", "number of dimensions is 0"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x02", "ends early"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02", "3 bytes in all|holds 10 bytes"),
    ],
)
def test_corrupt_files_are_rejected_with_the_path(tmp_path, payload, message):
    path = tmp_path / "bad-idx"
    path.write_bytes(payload)
    with pytest.raises(IDXFormatError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_gzip_is_rejected(tmp_path):
    path = tmp_path / "t.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x04abcd")[:-6])
    with pytest.raises(IDXFormatError, match="gzip"):
        read_idx(path)


def test_unsupported_dtype_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="uint16"):
        write_idx(tmp_path / "x", np.zeros(3, np.uint16))


def test_colour_images_are_read_channels_last_and_returned_channels_first(tmp_path):
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, size=(3, 4, 5, 3), dtype=np.uint8)  # [N, H, W, C]
    images = images_channels_first(stored, tmp_path / "f")
    assert images.shape == (3, 3, 4, 5)
    assert images[1, 2, 3, 4] == stored[1, 3, 4, 2]  # image 1, channel 2, row 3, column 4
    grey = images_channels_first(stored[..., :1], tmp_path / "f")
    assert grey.shape == (3, 4, 5) and np.array_equal(grey, stored[..., 0])
    plain = stored[..., 0]
    assert images_channels_first(plain, tmp_path / "f") is plain


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((3, 3, 8, 8), r"look channels first \[N, C, H, W\].*transpose\(0, 2, 3, 1\)"),
        ((3, 8), r"shape \(3, 8\); expected \[N, H, W\] or channels last"),
    ],
)
def test_other_layouts_are_refused_naming_the_file(tmp_path, shape, message):
    with pytest.raises(IDXFormatError, match=message):
        images_channels_first(np.zeros(shape, np.uint8), tmp_path / "f")
