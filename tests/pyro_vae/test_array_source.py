import re
import shlex

import numpy as np
import pytest
import torch

from pyro_vae.array_source import (
    UnreadArraysWarning,
    check_images,
    from_dataset,
    read_array_file,
)
from pyro_vae.data import Preprocessing, load_data

IMAGES = np.random.default_rng(0).integers(0, 256, (30, 4, 4), dtype=np.uint8)


def test_an_npy_is_memory_mapped_with_its_sibling_labels(tmp_path):
    np.save(tmp_path / "x.npy", IMAGES)
    assert not read_array_file(str(tmp_path / "x.npy")).labelled
    np.save(tmp_path / "x.labels.npy", np.arange(30) % 3)
    arrays = read_array_file(str(tmp_path / "x.npy"))
    assert isinstance(arrays.x, np.memmap) and arrays.labelled and arrays.max_value == 255
    assert list(arrays.y[:4]) == [0, 1, 2, 0] and len(arrays.files) == 2


def test_an_npz_is_read_into_memory(tmp_path):
    np.savez(tmp_path / "d.npz", x=IMAGES.astype(np.float32) / 255, y=np.zeros(30, np.int8))
    arrays = read_array_file(str(tmp_path / "d.npz"))
    assert not isinstance(arrays.x, np.memmap) and not arrays.integer and arrays.max_value == 1
    np.savez(tmp_path / "bad.npz", images=IMAGES)
    with pytest.raises(ValueError, match=r"\['images'\]; expected the images under 'x'.*memory"):
        read_array_file(str(tmp_path / "bad.npz"))


def test_arrays_of_an_npz_that_are_not_read_are_named(tmp_path):
    # x_test and y_test beside x and y were dropped unsaid, the test rows drawn from x
    # (tester DZ)
    np.savez(tmp_path / "d.npz", x=IMAGES, y=np.zeros(30, np.int8), x_test=IMAGES[:5])
    with pytest.warns(UnreadArraysWarning, match=r"holds \['x_test'\] beside 'x' and 'y'"):
        read_array_file(str(tmp_path / "d.npz"))
    np.savez(tmp_path / "l.npz", x=IMAGES, labels=np.zeros(30, np.int8))
    with pytest.warns(UnreadArraysWarning, match=r"holds \['labels'\] beside 'x', which"):
        assert not read_array_file(str(tmp_path / "l.npz")).labelled


def test_integer_pixels_other_than_uint8_take_their_largest_value_as_full():
    assert check_images(IMAGES.astype(np.int16) // 16, "x") == (15, True)
    assert check_images(IMAGES > 128, "x") == (1, True)
    assert check_images(IMAGES.reshape(30, 16).astype(np.float64) / 255, "x") == (1, False)


@pytest.mark.parametrize(
    "x, words",
    [
        (IMAGES.reshape(-1), ["data: shape (480,) has rank 1", "[N, D]"]),
        (IMAGES.reshape(30, 1, 1, 4, 4), ["rank 5"]),
        (np.zeros((0, 4, 4), np.uint8), ["(0, 4, 4) is empty"]),
        # tester CJ: 3 rows of no values were "empty; expected at least one row"
        (np.zeros((3, 0), np.uint8), ["(3, 0) has 3 rows of no values"]),
        # tester CJ: a list of rows is read as a Dataset of (x, y) pairs: said so
        ([[0.1, 0.2]] * 5, ["has rank 1", "a list is read as a Dataset", "np.asarray(rows"]),
        ([[0.1, 0.2, 0.3]] * 5, ["item 0 has 3 parts", "a list is read as a Dataset"]),
        (IMAGES.astype(np.complex64), ["dtype complex64", "uint8"]),
        (np.array([["a"]]), ["dtype <U1"]),
        (np.where(IMAGES == IMAGES[2, 1, 1], np.nan, 0.5).astype(np.float32), ["row 2", "NaN"]),
        (np.full((3, 2), np.inf), ["NaN or infinite"]),
        # tester CJ: the way for real-valued vectors was not said
        (
            IMAGES.astype(np.float32),
            ["[0, 255]", "expected intensities in [0, 1]", "real-valued features go in a table"],
        ),
        (IMAGES.astype(np.int32) - 1, ["negative pixel value -1"]),
        (np.zeros((3, 8, 8, 3), np.uint8), ["looks channels last", "--layout channels-last"]),
        # tester EX: four channels of 20x3, or RGB of 4x20: it was read as the first
        (np.zeros((3, 4, 20, 3), np.uint8), ["could be 4 channels of 20x3 or 3 of 4x20"]),
        # four channels of 4x4 either way round: it was read channels first, unsaid
        (np.zeros((3, 4, 4, 4), np.uint8), ["is 4 channels of 4x4 images either way round"]),
    ],
)
def test_bad_arrays_are_refused_before_any_work(x, words):
    with pytest.raises(ValueError) as raised:
        load_data(x)
    for word in words:
        assert word in str(raised.value)


def test_square_images_of_any_channel_count_first_are_read_channels_first():
    """Tester CC: two channels of 4x4 images, [N, 2, 4, 4], were refused as channels last
    (a 4 last, looking like RGBA, and a 2 first, which is no grey, RGB or RGBA count)."""
    x = np.random.default_rng(0).integers(0, 256, (30, 2, 4, 4), dtype=np.uint8)
    assert load_data(x).image_shape == (2, 4, 4)
    with pytest.raises(ValueError, match="looks channels last"):  # [N, H, W, C], not square
        load_data(np.zeros((30, 2, 4, 3), np.uint8))
    x = np.random.default_rng(0).integers(0, 256, (30, 3, 3, 3), dtype=np.uint8)
    assert load_data(x, layout="channels-last").image_shape == (3, 3, 3)  # told: read
    ones = np.random.default_rng(0).integers(0, 256, (30, 1, 1, 1), dtype=np.uint8)
    assert load_data(ones).image_shape == (1, 1, 1)  # both layouts the same


def test_bad_labels_and_bad_python_objects_are_refused():
    with pytest.raises(ValueError, match=r"labels: shape \(29,\); expected \(30,\)"):
        load_data(IMAGES, labels=np.zeros(29, int))
    with pytest.raises(ValueError, match="labels: dtype float64; expected integer"):
        load_data(IMAGES, labels=np.zeros(30))
    with pytest.raises(TypeError, match="labels: given with the dataset 'digits'"):
        load_data("digits", labels=np.zeros(30, int))
    with pytest.raises(TypeError, match=r"torch.Tensor; expected a numpy array \(data.numpy"):
        load_data(torch.zeros(3, 4))
    with pytest.raises(TypeError, match="data: a int; expected a dataset name or path"):
        load_data(3)


@pytest.mark.parametrize("columns", [None, ["g1", "g2", "g3"]])
def test_a_data_frame_is_refused_not_read_by_column(columns):
    """Tester CT: a pandas frame passed the Dataset check (len, [i]), but ``frame[i]`` is
    column i: a square frame with integer column labels was read transposed, silently
    (its all-zero first column became an all-zero row), and a named one raised KeyError: 0."""
    import pandas as pd

    values = np.random.default_rng(0).random((3, 3))
    values[:, 0] = 0
    frame = pd.DataFrame(values, columns=columns)
    refused = r"^data: a pandas DataFrame, whose \[i\] is read by key or label .* not as row "
    with pytest.raises(TypeError, match=refused + r"i; expected a table as a CSV or Parquet"):
        load_data(frame, Preprocessing("gaussian"), val_fraction=0, test_fraction=0.34)
    with pytest.raises(TypeError, match=r"^data: a pandas Series, whose \[i\] is read by"):
        load_data(frame["g1" if columns else 1])
    with pytest.raises(TypeError, match=r"^data: a dict, whose \[i\] is read by key"):
        load_data({"a": [1.0, 2.0], "b": [3.0, 4.0]})  # tester CR: a bare KeyError: 0


def test_a_torch_dataset_of_pairs_or_images_becomes_arrays():
    pairs = torch.utils.data.TensorDataset(torch.as_tensor(IMAGES), torch.arange(30) % 2)
    arrays = from_dataset(pairs)
    assert (
        np.array_equal(arrays.x, IMAGES) and arrays.labelled and arrays.y[:3].tolist() == [0, 1, 0]
    )
    data = load_data(pairs, Preprocessing("gaussian"))
    assert data.info["dataset"] == "dataset TensorDataset" and data.x_dim == 16
    ragged = [torch.zeros(4), torch.zeros(5)]
    with pytest.raises(ValueError, match=r"item 1 has shape \(5,\) but item 0 has \(4,\)"):
        from_dataset(ragged)
    with pytest.raises(ValueError, match="the dataset has 0 items"):
        from_dataset([])
    with pytest.raises(ValueError, match=r"item 1 is x, unlike item 0"):
        from_dataset([(torch.zeros(4), 1), torch.zeros(4)])


def test_a_torch_dataset_of_one_tensor_gives_unlabelled_images():
    # tester EK: TensorDataset(x), PyTorch's idiom for unlabelled data, items (x,), was
    # refused as "item 0 has 1 parts"
    arrays = from_dataset(torch.utils.data.TensorDataset(torch.as_tensor(IMAGES)))
    assert np.array_equal(arrays.x, IMAGES) and not arrays.labelled
    with pytest.raises(ValueError, match=r"item 0 has 3 parts; expected x, \(x,\) or \(x, y\)"):
        from_dataset([(torch.zeros(4), 0, 1)])


def test_a_dataset_of_dict_items_is_refused_naming_their_keys():
    # tester EK: {"x": ..., "y": ...} items were refused as "dtype object"
    items = [{"x": torch.zeros(4), "y": 0}] * 3
    with pytest.raises(ValueError, match=r"item 0 is a dict with the keys \['x', 'y'\]"):
        from_dataset(items)


def test_channels_first_colour_and_grey_arrays_are_taken_as_they_are():
    # (pixels that vary: a training set all one value is refused, tester U)
    rng = np.random.default_rng(0)
    for shape in ((6, 3, 8, 8), (6, 1, 8, 8), (6, 5, 8, 8)):
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        assert load_data(pixels).image_shape == shape[1:]
    # [N, 3, 8, 3] could be either: taken as stated (tester EX: [N, 5, 16, 3], five
    # channels of 16x3, was refused as channels last with no way to say otherwise)
    for shape in ((6, 3, 8, 3), (6, 5, 16, 3)):
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        with pytest.raises(ValueError, match="--layout channels-first"):
            load_data(pixels)
        assert load_data(pixels, layout="channels-first").image_shape == shape[1:]


def test_a_channels_last_file_reads_as_its_channels_first_copy_bit_for_bit(tmp_path):
    """Expected: the same array moved to [N, C, H, W] by numpy and read with the layout
    told by its shape; for a memory-mapped .npy, an .npz and an array from Python."""
    rng = np.random.default_rng(1)
    last = rng.integers(0, 256, (40, 4, 20, 3), dtype=np.uint8)
    np.save(tmp_path / "first.npy", np.ascontiguousarray(np.moveaxis(last, -1, 1)))
    np.save(tmp_path / "last.npy", last)
    np.savez(tmp_path / "last.npz", x=last)
    want = load_data(str(tmp_path / "first.npy"), layout="channels-first")
    assert want.image_shape == (3, 4, 20)
    for got in (
        load_data(str(tmp_path / "last.npy"), layout="channels-last"),
        load_data(str(tmp_path / "last.npz"), layout="channels-last"),
        load_data(last, layout="channels-last"),
        # tester FA: a Dataset's refusal named layout=, which was then refused
        load_data(torch.utils.data.TensorDataset(torch.as_tensor(last)), layout="channels-last"),
    ):
        assert got.image_shape == (3, 4, 20)
        for split in ("train_x", "val_x", "test_x"):
            assert torch.equal(
                torch.as_tensor(getattr(got, split)[:]), torch.as_tensor(getattr(want, split)[:])
            )


@pytest.mark.parametrize(
    "name, layout, words",
    [
        ("digits", "channels-last", "layout: 'channels-last' applies to an array (PATH.npy"),
        ("flat.npy", "channels-first", "given for data"),
        ("last.npy", "NHWC", "layout: 'NHWC' is not one of channels-first, channels-last"),
    ],
)
def test_a_layout_is_refused_where_it_does_not_apply(tmp_path, name, layout, words):
    np.save(tmp_path / "flat.npy", IMAGES)  # [N, H, W]: no channels
    np.save(tmp_path / "last.npy", np.zeros((3, 8, 8, 3), np.uint8))
    path = name if name == "digits" else str(tmp_path / name)
    with pytest.raises(ValueError, match=re.escape(words)):
        load_data(path, layout=layout)


def test_an_npz_that_reads_is_refused_for_what_it_holds_not_as_unreadable(tmp_path):
    np.savez(tmp_path / "short_y.npz", x=IMAGES, y=np.zeros(len(IMAGES) - 1, np.int64))
    np.savez(tmp_path / "no_x.npz", images=IMAGES)
    (tmp_path / "junk.npz").write_bytes(b"not a zip archive")
    for name, words in (
        ("short_y.npz", ["['y']"]),
        ("no_x.npz", ["['images']", "under 'x'"]),
        ("junk.npz", ["is not a readable numpy file", "neither a .npy nor an .npz"]),
    ):
        with pytest.raises(ValueError) as raised:
            load_data(str(tmp_path / name))
        message = str(raised.value)
        assert all(w in message for w in words), message
        assert ("not a readable" in message) == (name == "junk.npz"), message


def test_a_text_file_named_npy_is_said_to_be_text_not_pickled_data(tmp_path):
    """Tester CC: a CSV named .npy got numpy's "contains pickled (object) data ... load it
    unsafely" (numpy reads anything without its magic as a pickle). Expected: what the file
    is, and the table: prefix that reads it."""
    path = tmp_path / "my t.npy"  # the advised flag is a shell word (tester ER)
    path.write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(ValueError) as raised:
        load_data(str(path))
    message = str(raised.value)
    assert "pickle" not in message
    advised = message.split("give it as `", 1)[1].split("`")[0]
    assert shlex.split(advised)[:2] == ["--data", f"table:{path}"]
    path.write_text("a" * 4095 + "é,1\n")  # a character cut by the bytes read: still text
    with pytest.raises(ValueError, match="it holds text: a table"):
        load_data(str(path))
    np.save(path, np.zeros(3))  # numpy's own format, truncated: numpy's words kept
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="is not a readable numpy file") as raised:
        load_data(str(path))
    assert "neither a .npy" not in str(raised.value)


def test_an_empty_file_and_an_object_array_are_refused_for_what_they_are(tmp_path):
    """Tester FM: a 0-byte .npy was said to hold text (a table?), and an object array got
    numpy's reason alone, with nothing expected."""
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(
        ValueError,
        match=r"empty.npy is not a readable numpy file \(it is "
        r"empty \(0 bytes\); expected an array saved with np.save\)$",
    ):
        load_data(str(tmp_path / "empty.npy"))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(
        ValueError,
        match=r"objects.npy is not a readable numpy file \(.*"
        r"objects in dtype; expected an array of numbers",
    ):
        load_data(str(tmp_path / "objects.npy"))


def test_an_array_file_under_the_other_suffix_is_refused_naming_it(tmp_path):
    """Tester CC: an .npz archive named .npy raised a TypeError traceback ("a NpzFile;
    expected a numpy array"), and a .npy named .npz "'numpy.ndarray' object does not
    support the context manager protocol"; likewise a labels file that is an archive."""
    x = np.random.default_rng(0).random((5, 4))
    np.savez(tmp_path / "a.npz", x=x)
    np.save(tmp_path / "b.npy", x)
    (tmp_path / "a.npz").rename(tmp_path / "archive.npy")
    (tmp_path / "b.npy").rename(tmp_path / "array.npz")
    with pytest.raises(ValueError, match=r"archive.npy is an .npz archive \(of \['x'\]\)"):
        read_array_file(str(tmp_path / "archive.npy"))
    with pytest.raises(ValueError, match=r"array.npz is one .npy array \(5, 4\) named as an"):
        read_array_file(str(tmp_path / "array.npz"))
    np.save(tmp_path / "c.npy", x)
    np.savez(tmp_path / "c.labels.npz", y=np.zeros(5))
    (tmp_path / "c.labels.npz").rename(tmp_path / "c.labels.npy")
    with pytest.raises(ValueError, match=r"c.labels.npy is an .npz archive"):
        read_array_file(str(tmp_path / "c.npy"))
