"""The datasets as stored (pyro_vae.datasets): named sources, IDX folders, what is missing
or malformed, and the word for rows; and the old import path of the names that moved there."""

import shlex

import numpy as np
import pytest
import torch

from pyro_vae.data import Preprocessing, load_data
from pyro_vae.datasets import FASHION_MNIST_DIR, DatasetNotFoundError, load_raw
from pyro_vae.idx import write_idx


def _write_idx_dataset(directory, n_train=30, n_test=10, side=6, gz=True):
    rng = np.random.default_rng(1)
    suffix = ".gz" if gz else ""
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            directory / f"{prefix}-images-idx3-ubyte{suffix}",
            rng.integers(0, 256, (n, side, side), dtype=np.uint8),
        )
        write_idx(
            directory / f"{prefix}-labels-idx1-ubyte{suffix}",
            rng.integers(0, 10, n, dtype=np.uint8),
        )
    return directory


def test_idx_directory_and_categorical_levels(tmp_path):
    directory = _write_idx_dataset(tmp_path / "mini", gz=False)
    data = load_data(f"idx:{directory}", Preprocessing("categorical", levels=4), val_fraction=0.2)
    assert data.info["num_test"] == 10 and data.info["num_train"] + data.info["num_val"] == 30
    assert data.x_dim == 36 and set(torch.unique(data.test_x).tolist()) <= {0.0, 1.0, 2.0, 3.0}


def test_missing_and_unknown_datasets_say_what_to_do(tmp_path, monkeypatch):
    folder = tmp_path / "pictures"  # tester FM: a folder given without images:
    folder.mkdir()
    with pytest.raises(ValueError, match=f"a folder of images is given as images:{folder}"):
        load_data(str(folder))
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*digits, fashion-mnist"):
        load_data("mnist")
    with pytest.raises(DatasetNotFoundError, match="not a directory"):
        load_data(f"idx:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="train-images-idx3-ubyte"):
        load_data(f"idx:{tmp_path / 'empty'}")
    monkeypatch.setattr("pyro_vae.datasets.FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_data("fashion-mnist")


def test_wrong_image_shapes_are_rejected(tmp_path):
    directory = _write_idx_dataset(tmp_path / "flat")
    write_idx(directory / "train-images-idx3-ubyte.gz", np.zeros((30, 36), np.uint8))
    with pytest.raises(ValueError, match=r"shape \(30, 36\); expected \[N, H, W\]"):
        load_data(f"idx:{directory}")
    directory = _write_idx_dataset(tmp_path / "labels")
    write_idx(directory / "train-labels-idx1-ubyte.gz", np.zeros(29, np.uint8))
    with pytest.raises(ValueError, match="labels have shape"):
        load_data(f"idx:{directory}")


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_from_debian_package():
    raw = load_raw("fashion-mnist")
    assert raw.train_x.shape == (60000, 28, 28) and raw.test_x.shape == (10000, 28, 28)
    assert raw.max_value == 255 and set(np.unique(raw.test_y)) == set(range(10))
    data = load_data("fashion-mnist", val_fraction=0.1)
    assert (data.info["num_train"], data.info["num_val"], data.info["num_test"]) == (
        54000,
        6000,
        10000,
    )


def test_tables_and_vectors_are_rows_and_images_are_images(tmp_path):
    """Review R2: whether data are rows or images was decided twice (the command line by
    the image shape, ``load_data`` by the table columns or a 2-D array); one rule,
    ``row_unit``, gives the word for the raw data and the splits, and the command line's."""
    from pyro_vae.cli_report import rows_not_images
    from pyro_vae.data import load_raw, row_unit

    table = tmp_path / "t.csv"
    table.write_text("a,b\n" + "".join(f"{i % 7},{i % 5}\n" for i in range(40)))
    vectors = np.random.default_rng(0).random((40, 6)).astype(np.float32)
    colour = np.random.default_rng(1).random((40, 3, 4, 4)).astype(np.float32)
    for data, word in (
        ("digits", "images"), (str(table), "rows"), (vectors, "rows"), (colour, "images"),
    ):  # fmt: skip
        splits = load_data(data, Preprocessing(likelihood="normal"))
        assert splits.unit == word and rows_not_images(splits) == (word == "rows")
    assert load_raw("digits").unit == "images" and load_raw(str(table)).unit == "rows"
    assert [row_unit(s) for s in (None, (6,), (8, 8), (3, 4, 4))] == [
        "rows", "rows", "images", "images",
    ]  # fmt: skip


def test_the_names_that_moved_to_datasets_still_resolve_from_data_with_a_warning():
    """Split of data.py: the sources moved to pyro_vae.datasets; the old import path gives
    the same objects, with a FutureWarning naming the new one."""
    import pyro_vae.data as data
    import pyro_vae.datasets as datasets

    with pytest.warns(FutureWarning, match=r"pyro_vae.data.SOURCES has moved to pyro_vae.datasets"):
        assert data.SOURCES is datasets.SOURCES
    with pytest.warns(FutureWarning, match="DatasetNotFoundError has moved"):
        assert data.DatasetNotFoundError is datasets.DatasetNotFoundError
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        data.nothing  # noqa: B018


def test_wider_integer_idx_pixels_take_the_largest_value_of_either_file(tmp_path):
    """Tester CC: int16 training images 0..999 beside a test file of 4000s were read as
    x / 999, so every test intensity was 4.004 (scored under gaussian, all 1 under
    bernoulli), and the note called the int16 pixels int64."""
    directory = _write_idx_dataset(tmp_path / "wide", gz=False)
    rng = np.random.default_rng(0)
    train = rng.integers(0, 1000, (30, 6, 6)).astype(np.int16)
    write_idx(directory / "train-images-idx3-ubyte", train)
    write_idx(directory / "t10k-images-idx3-ubyte", np.full((10, 6, 6), 4000, np.int16))
    data = load_data(f"idx:{directory}", Preprocessing("gaussian"), val_fraction=0.2)
    assert data.info["full_intensity"] == {"value": 4000, "dtype": "int16"}
    assert float(data.test_x.max()) == 1.0  # 4000 / 4000
    assert float(data.train_x.max()) == pytest.approx(float(train.max()) / 4000)
    assert load_raw(f"idx:{directory}").train_x.dtype == np.int16  # as stored


@pytest.mark.parametrize("prefix", ["images:", "table:"])
def test_a_prefix_names_the_kind_of_source_whatever_the_path_ends_in(tmp_path, prefix):
    """Tester CC: ``images:d/x.npy`` was read as an array at the path 'images:d/x.npy'
    ("is not a file; expected a .npy or .npz array")."""
    np.save(tmp_path / "x.npy", np.zeros((4, 3)))
    expected = "which is not a directory" if prefix == "images:" else "could not be read as CSV"
    with pytest.raises((ValueError, DatasetNotFoundError), match=expected) as raised:
        load_raw(f"{prefix}{tmp_path / 'x.npy'}")
    if prefix == "table:":  # and what it is (tester CE: the CSV decoding error alone)
        path = tmp_path / "x.npy"
        assert f"it is a numpy .npy array, not a table: give it as `--data {path}`, " in str(
            raised.value
        )
        spaced = tmp_path / "my x.npy"  # the advised flag is a shell word (tester ER)
        np.save(spaced, np.zeros((4, 3)))
        with pytest.raises(ValueError) as raised:
            load_raw(f"table:{spaced}")
        advised = str(raised.value).split("give it as `", 1)[1].split("`")[0]
        assert shlex.split(advised) == ["--data", str(spaced)]
        np.savez(tmp_path / "x.npz", x=np.zeros((4, 3)))
        with pytest.raises(ValueError, match=r"it is a zip archive \(an .npz\?\), not a table"):
            load_raw(f"table:{tmp_path / 'x.npz'}")


def test_idx_files_of_two_pixel_types_or_of_zeros_alone_are_refused_in_words(tmp_path):
    """Tester CE: uint8 training images beside int16 test images were scaled apart (test
    intensities of 11.8, scored); int16 files of zeros alone divided by 0 (a traceback)."""
    directory = _write_idx_dataset(tmp_path / "mixed", gz=False)
    write_idx(directory / "t10k-images-idx3-ubyte", np.full((10, 6, 6), 2999, np.int16))
    with pytest.raises(ValueError, match="holds uint8 pixels and .*t10k-images-idx3-ubyte int16"):
        load_data(f"idx:{directory}")
    directory = _write_idx_dataset(tmp_path / "zeros", gz=False)
    for prefix, n in (("train", 30), ("t10k", 10)):
        write_idx(directory / f"{prefix}-images-idx3-ubyte", np.zeros((n, 6, 6), np.int16))
    with pytest.raises(ValueError, match="its int16 values 0..0 are read as intensities 0..0/1"):
        load_data(f"idx:{directory}", Preprocessing("gaussian"))


def test_idx_labels_of_floats_are_refused_as_arrays_are(tmp_path):
    # a float label file's 2.7 was read as class 2 and −0.9 as 0, no word (tester DZ)
    directory = _write_idx_dataset(tmp_path / "floats", gz=False)
    write_idx(directory / "train-labels-idx1-ubyte", np.full(30, 2.7, np.float32))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte holds float32 labels"):
        load_data(f"idx:{directory}")


def test_a_table_is_named_by_the_kind_that_reads_it():
    from pyro_vae.datasets import names_a_table

    for name in ("table:/d/x.npy", "/d/x.csv", "/d/x.CSV", "/d/x.parquet"):
        assert names_a_table(name), name
    for name in ("digits", "/d/x.npy", "/d/x.npz", "idx:/d", "images:/d", "nonsense"):
        assert not names_a_table(name), name
