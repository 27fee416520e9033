import numpy as np
import pytest
import torch

from pyro_vae.data import (
    Preprocessing,
    load_data,
    load_raw,
)
from pyro_vae.idx import write_idx
from pyro_vae.mapped_rows import MappedRows


def test_digits_splits_are_disjoint_fixed_and_complete():
    a = load_data("digits", val_fraction=0.1, test_fraction=0.1)
    b = load_data("digits", val_fraction=0.1, test_fraction=0.1)
    assert (a.info["num_train"], a.info["num_val"], a.info["num_test"]) == (1455, 162, 180)
    assert a.x_dim == 64 and a.image_shape == (8, 8)
    torch.testing.assert_close(a.test_x, b.test_x)
    torch.testing.assert_close(a.train_y, b.train_y)
    assert a.train_x.shape[0] + a.val_x.shape[0] + a.test_x.shape[0] == 1797


def test_static_binarization_thresholds_intensity():
    data = load_data("digits", Preprocessing("bernoulli", "static", threshold=0.5))
    raw = load_raw("digits")
    assert set(torch.unique(data.train_x).tolist()) == {0.0, 1.0}
    assert data.info["binarization"] == "static"
    # The share of "on" pixels equals the share of raw pixels above 8/16.
    expected = (raw.train_x > 8).mean()
    everything = torch.cat([data.train_x, data.val_x, data.test_x])
    assert everything.mean().item() == pytest.approx(expected, abs=1e-6)


def test_dynamic_binarization_redraws_each_epoch_reproducibly():
    data = load_data("digits", Preprocessing("bernoulli", "dynamic"))
    assert data.dynamic and 0 < data.train_x.max() <= 1
    assert set(torch.unique(data.test_x).tolist()) == {0.0, 1.0}
    first = [x for x, _ in data.train_batches(64, epoch=0, seed=3)]
    again = [x for x, _ in data.train_batches(64, epoch=0, seed=3)]
    other = [x for x, _ in data.train_batches(64, epoch=1, seed=3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    assert set(torch.unique(first[0]).tolist()) == {0.0, 1.0}


def test_batches_cover_the_training_set_once_per_epoch():
    data = load_data("digits", Preprocessing("gaussian"))
    labels = torch.cat([y for _, y in data.train_batches(100, epoch=0, seed=0)])
    assert labels.shape[0] == data.train_x.shape[0]
    assert torch.equal(torch.sort(labels).values, torch.sort(data.train_y).values)


def test_gaussian_and_categorical_representations():
    gauss = load_data("digits", Preprocessing("gaussian"))
    assert 0.0 <= gauss.train_x.min() and gauss.train_x.max() == 1.0
    cat = load_data("digits", Preprocessing("categorical"))
    assert cat.info["levels"] == 17 and cat.pixel_max == 16.0
    # digits' pixels are already integers 0..16: quantization keeps them exactly.
    torch.testing.assert_close(cat.train_x, gauss.train_x * 16)
    # the continuous Bernoulli models the intensities themselves, not binarized
    cb = load_data("digits", Preprocessing("continuous-bernoulli"))
    torch.testing.assert_close(cb.train_x, gauss.train_x, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"likelihood": "poisson"}, "likelihood: 'poisson'"),
        ({"binarize": "random"}, "binarize"),
        ({"threshold": 1.0}, "threshold: 1.0"),
        ({"likelihood": "categorical", "levels": 1}, "levels"),
    ],
)
def test_bad_preprocessing_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Preprocessing(**kwargs)


def _loader_reference(x, y, batch_size, generator, binarize):
    """The torch DataLoader pipeline train_batches used to be, for a stream comparison."""
    from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

    class Indexed(Dataset):
        def __len__(self):
            return x.shape[0]

        def __getitem__(self, index):
            index_t = torch.as_tensor(index)
            xb = x[index_t]
            if binarize:
                xb = torch.bernoulli(xb, generator=generator)
            return xb, y[index_t]

    sampler = BatchSampler(RandomSampler(Indexed(), generator=generator), batch_size, False)
    return DataLoader(Indexed(), sampler=sampler, batch_size=None)


@pytest.mark.parametrize("batch_size", [64, 50])
def test_train_batches_draw_exactly_what_a_torch_dataloader_draws(batch_size):
    from pyro_vae.data_source import epoch_generator

    data = load_data("digits", Preprocessing("bernoulli", "dynamic"), val_fraction=0.0)
    data.train_x, data.train_y = data.train_x[:1400], data.train_y[:1400]  # 1400 % 50 == 0
    ours = data.train_batches(batch_size, epoch=2, seed=5)
    reference_gen = epoch_generator(5, 2)
    reference = _loader_reference(data.train_x, data.train_y, batch_size, reference_gen, True)
    got, want = list(ours), list(reference)
    assert len(got) == len(want) == len(ours)
    for (xa, ya), (xb, yb) in zip(got, want, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.equal(ours.generator.get_state(), reference_gen.get_state())


def test_image_splits_supply_batches_of_model_arguments_with_their_rows():
    from pyro_vae.data_source import DataSource

    data = load_data("digits", Preprocessing("bernoulli"))
    assert isinstance(data, DataSource) and data.per_datapoint and data.num_train == 1455
    assert data.steps_per_epoch(64) == 23 and data.steps_per_epoch(64, drop_last=True) == 22
    indexed = list(data.indexed_batches(64, epoch=1, seed=2, drop_last=True))
    plain = list(data.train_batches(64, epoch=1, seed=2, drop_last=True))
    assert len(indexed) == 22
    for (rows, (x,)), (x_plain, _) in zip(indexed, plain, strict=True):
        assert torch.equal(x, data.train_x[rows]) and torch.equal(x, x_plain)


def test_an_empty_split_and_a_batch_that_drops_everything_are_refused():
    import dataclasses

    data = load_data("digits", Preprocessing("bernoulli"))
    with pytest.raises(ValueError, match="drop_last: with batch_size 2000 larger than the 1455"):
        data.steps_per_epoch(2000, drop_last=True)
    assert data.steps_per_epoch(2000) == 1
    empty = dataclasses.replace(data, train_x=data.train_x[:0], train_y=data.train_y[:0])
    with pytest.raises(ValueError, match="data: the training split is empty"):
        empty.steps_per_epoch(64)


def test_too_few_training_rows_are_counted_in_rows_for_tables_and_vectors(tmp_path):
    # tester AE: a one-row table was refused for "0 training images"
    table = tmp_path / "one.csv"
    table.write_text("a,b,c\n1.0,2.0,3.0\n")
    with pytest.raises(ValueError, match="leaves 0 training rows after"):
        load_data(str(table), Preprocessing("normal"))
    vectors, images = tmp_path / "v.npy", tmp_path / "i.npy"
    np.save(vectors, np.zeros((1, 5), dtype=np.float32))
    np.save(images, np.zeros((1, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="leaves 0 training rows after"):
        load_data(str(vectors), Preprocessing("bernoulli"))
    with pytest.raises(ValueError, match="leaves 0 training images after"):
        load_data(str(images), Preprocessing("bernoulli"))


def test_training_rows_go_to_the_likelihoods_check_in_named_chunks():
    data = load_data("digits", Preprocessing("bernoulli"))
    seen = []
    data.check_training_data(lambda x, what: seen.append((x.shape[0], what)), chunk=600)
    assert seen == [
        (600, "training data (rows 0..599)"),
        (600, "training data (rows 600..1199)"),
        (255, "training data (rows 1200..1454)"),
    ]


def test_dynamic_intensities_are_checked_by_the_data_itself():
    data = load_data("digits", Preprocessing("bernoulli", "dynamic"))

    def never(x, what):
        raise AssertionError("intensities are not observations")

    data.check_training_data(never)
    data.train_x[700, 3] = 1.5
    with pytest.raises(ValueError, match=r"rows 0..1454\): intensities outside \[0, 1\]"):
        data.check_training_data(never)


def test_the_validation_protocol_of_image_splits():
    from pyro_vae.data_source import HELD_OUT, TRAINING_SET

    data = load_data("digits", Preprocessing("bernoulli"))
    checked = []
    held_out = data.validation_set(False, lambda x, what: checked.append(what))
    assert held_out.kind == HELD_OUT and held_out.args[0] is data.val_x
    assert not held_out.whole_data and held_out.draws == 1 and checked == ["validation data"]
    local = data.validation_set(True, lambda x, what: checked.append(what))
    assert local.kind == TRAINING_SET and local.args[0] is data.train_x and len(checked) == 1
    none = load_data("digits", Preprocessing("bernoulli"), val_fraction=0.0)
    assert none.validation_set(False, lambda x, what: None) is None


def test_a_local_guide_under_dynamic_binarization_validates_on_one_fixed_draw():
    data = load_data("digits", Preprocessing("bernoulli", "dynamic"))
    first = data.validation_set(True, lambda x, what: None).args[0]
    again = data.validation_set(True, lambda x, what: None).args[0]
    assert set(torch.unique(first).tolist()) == {0.0, 1.0} and torch.equal(first, again)


def test_a_bad_validation_image_is_refused_by_the_check():
    data = load_data("digits", Preprocessing("bernoulli"))

    def check(x, what):
        raise ValueError(f"{what}: refused")

    with pytest.raises(ValueError, match="validation data: refused"):
        data.validation_set(False, check)


# --- arrays: memory-mapped .npy against the same array in memory ------------------------
@pytest.fixture
def npy(tmp_path):
    images = np.random.default_rng(3).integers(0, 256, (53, 3, 5), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "x.labels.npy", np.arange(53) % 4)
    return tmp_path / "x.npy", images


@pytest.mark.parametrize(
    "prep",
    [
        Preprocessing("bernoulli"),
        Preprocessing("bernoulli", "dynamic"),
        Preprocessing("gaussian"),
        Preprocessing("categorical", levels=5),
    ],
    ids=["static", "dynamic", "gaussian", "categorical"],
)
def test_memory_mapped_batches_equal_the_in_memory_ones_bit_for_bit(npy, prep):
    path, images = npy
    mapped = load_data(str(path), prep, val_fraction=0.2)
    held = load_data(images, prep, val_fraction=0.2, labels=np.arange(53) % 4)
    assert mapped.info["memory_mapped"] and "memory_mapped" not in held.info
    for epoch in (0, 1):
        pairs = zip(mapped.train_batches(8, epoch, 5), held.train_batches(8, epoch, 5), strict=True)
        for (x, y), (x_ref, y_ref) in pairs:
            assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    for split in ("val", "test"):
        x, x_ref = getattr(mapped, f"{split}_x"), getattr(held, f"{split}_x")
        assert torch.equal(x[:], x_ref) and torch.equal(
            getattr(mapped, f"{split}_y"), getattr(held, f"{split}_y")
        )


def test_memory_mapped_splits_are_index_sets_into_the_map_not_copies(npy):
    path, images = npy
    data = load_data(str(path), val_fraction=0.2, test_fraction=0.2)
    rows = [data.train_x.index, data.val_x.index, data.test_x.index]
    for x in (data.train_x, data.val_x, data.test_x):
        assert isinstance(x, MappedRows) and isinstance(x.array, np.memmap)
        assert str(x.array.filename) == str(path.resolve())
    assert sorted(np.concatenate(rows).tolist()) == list(range(53))
    assert data.image_shape == (3, 5) and data.x_dim == 15
    assert torch.equal(data.test_y, torch.as_tensor(np.arange(53)[rows[2]] % 4))
    assert data.info["provenance"]["shape"] == [53, 3, 5]
    assert data.info["provenance"]["dtype"] == "uint8"


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.uint16, np.int32])
def test_integer_pixels_of_a_type_other_than_uint8_say_their_full_intensity(tmp_path, dtype):
    """Tester BM: int64 pixels 0..200 (``np.array(pixels)``'s default type) are read as
    x / 200, the same values in uint8 as x / 255, and nothing said so: the full intensity
    taken from the data is in ``info`` (metrics.json) for ``fit``'s note; uint8's, which
    its type tells, is not."""
    x = (np.arange(30 * 9).reshape(30, 3, 3) % 201).astype(dtype)  # 0..200
    np.save(tmp_path / "x.npy", x)
    data = load_data(str(tmp_path / "x.npy"), Preprocessing("gaussian"))
    full = 255 if dtype == np.uint8 else 200
    rows = data.train_x.index
    assert torch.allclose(data.train_x[:], torch.as_tensor(x[rows].reshape(-1, 9) / full).float())
    expected = None if dtype == np.uint8 else {"value": 200, "dtype": np.dtype(dtype).name}
    assert data.info.get("full_intensity") == expected


def test_a_float_array_of_intensities_trains_from_python(tmp_path):
    from pyro.infer import Trace_ELBO

    from models.vae import VAE
    from pyro_vae import TrainConfig, fit

    x = np.random.default_rng(4).random((40, 6), dtype=np.float32)
    np.save(tmp_path / "v.npy", x)
    data = load_data(str(tmp_path / "v.npy"), Preprocessing("gaussian"))
    assert torch.equal(data.train_x[:], torch.as_tensor(x[data.train_x.index]))
    assert data.info["labelled"] is False and data.image_shape is None  # rows, as a table's
    model = VAE(6, latent_dim=2, hidden_dims=(8,), likelihood="gaussian")
    result = fit(
        model, model.make_guide(), data, Trace_ELBO(), TrainConfig(epochs=1, progress=False)
    )
    assert len(result.history) == 1 and np.isfinite(result.history[0]["val_elbo"])


def test_a_colour_idx_folder_gives_c_h_w_images_and_trains_from_the_command_line(tmp_path):
    from pyro_vae.cli import main

    rng = np.random.default_rng(3)
    directory = tmp_path / "colour"
    directory.mkdir()
    stored = {split: rng.integers(0, 256, (n, 4, 5, 3), dtype=np.uint8) for split, n in
              (("train", 20), ("t10k", 6))}  # fmt: skip
    for split, images in stored.items():
        write_idx(directory / f"{split}-images-idx3-ubyte", images)
        write_idx(
            directory / f"{split}-labels-idx1-ubyte", (np.arange(len(images)) % 2).astype(np.uint8)
        )
    data = load_data(f"idx:{directory}", Preprocessing("gaussian"), val_fraction=0.0)
    assert data.image_shape == (3, 4, 5) and data.x_dim == 60
    assert torch.allclose(
        data.test_x.reshape(6, 3, 4, 5) * 255,
        torch.as_tensor(stored["t10k"].transpose(0, 3, 1, 2), dtype=torch.float32),
    )
    out = tmp_path / "run"  # the autoencoder: a colour run's figures without prior samples
    argv = ["fit", "--data", f"idx:{directory}", "--likelihood", "gaussian", "--out", str(out)]
    argv += ["--model", "models.autoencoder:Autoencoder", "--epochs", "1", "--no-progress"]
    assert main([*argv, "--hidden", "8", "--latent-dim", "2", "--ll-samples", "3"]) == 0
    assert (out / "reconstructions.png").exists()


def test_an_idx_folder_whose_test_file_is_empty_is_refused_before_any_work(tmp_path):
    """Tester EK: an empty t10k file (written by hand, MNIST's format) trained to the end,
    and then neither fit nor evaluate could score the run ("x: shape (0, 35) has no
    rows")."""
    import struct

    from pyro_vae.cli import main

    def write(path, array):  # magic 0 0 8 (unsigned bytes) ndim, then big-endian sizes
        head = bytes([0, 0, 8, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
        path.write_bytes(head + array.astype(np.uint8).tobytes())

    rng = np.random.default_rng(0)
    directory = tmp_path / "idx"
    directory.mkdir()
    write(directory / "train-images-idx3-ubyte", rng.integers(0, 256, (30, 5, 7)))
    write(directory / "train-labels-idx1-ubyte", rng.integers(0, 3, 30))
    write(directory / "t10k-images-idx3-ubyte", np.zeros((0, 5, 7)))
    write(directory / "t10k-labels-idx1-ubyte", np.zeros((0,)))
    words = r"has an official test split of 0 images; expected at least one test image"
    with pytest.raises(ValueError, match=words):
        load_data(f"idx:{directory}", Preprocessing("gaussian"))
    out = tmp_path / "run"
    argv = ["fit", "--data", f"idx:{directory}", "--likelihood", "gaussian", "--out", str(out)]
    assert main([*argv, "--epochs", "1", "--no-progress"]) == 2
    assert not out.exists()


def _digits_as_uint8_0_to_16():
    from sklearn.datasets import load_digits

    return load_digits().images[:300].astype(np.uint8)  # 0..16, read as 0..16/255


@pytest.mark.parametrize(
    ("prep", "made"),
    [
        (Preprocessing(), "static binarization at --threshold 0.5 makes each of them 0"),
        (Preprocessing("categorical"), "8 categorical levels put each of them at level 0"),
    ],
)
def test_a_training_set_preprocessing_makes_constant_is_refused_naming_why(tmp_path, prep, made):
    # tester U: digits saved as uint8 0..16 binarized to blank images, and the fit on them
    # scored a test ELBO of -0.56, with no word
    np.save(tmp_path / "raw16_u8.npy", _digits_as_uint8_0_to_16())
    with pytest.raises(ValueError) as refused:
        load_data(str(tmp_path / "raw16_u8.npy"), prep)
    message = str(refused.value)
    assert "raw16_u8.npy' is 0 after preprocessing" in message
    assert "uint8 values 0..16 are read as intensities 0..16/255" in message
    assert "(uint8 is read as 0..255)" in message and made in message
    assert "rescale the data to the full range" in message and "\n" not in message
    fix = "--threshold between 0 and 0.0627" if prep.likelihood == "bernoulli" else "16 or more"
    assert fix in message


def test_what_varies_after_preprocessing_is_kept(tmp_path):
    images = _digits_as_uint8_0_to_16()
    np.save(tmp_path / "raw16_u8.npy", images)
    for prep in (Preprocessing(threshold=0.03), Preprocessing("gaussian")):
        load_data(str(tmp_path / "raw16_u8.npy"), prep)  # the values the fix names train
    # under dynamic binarization only intensities all 0 (or all 1) make every draw alike
    load_data(np.full((40, 4, 4), 0.5, dtype=np.float32), Preprocessing(binarize="dynamic"))
    with pytest.raises(ValueError, match="dynamic binarization draws each of them as 0"):
        load_data(np.zeros((40, 4, 4), dtype=np.uint8), Preprocessing(binarize="dynamic"))
    with pytest.raises(ValueError, match="the stored values are all the same"):
        load_data(np.full((40, 4, 4), 7, dtype=np.int64), Preprocessing("gaussian"))


def test_a_folder_of_dark_images_and_a_constant_table_are_refused(tmp_path):
    from PIL import Image

    for i, image in enumerate(_digits_as_uint8_0_to_16()[:40]):
        (tmp_path / "dark" / str(i % 2)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(tmp_path / "dark" / str(i % 2) / f"{i}.png")
    with pytest.raises(ValueError, match="uint8 values 0..16 are read as intensities 0..16/255"):
        load_data(f"images:{tmp_path / 'dark'}")
    (tmp_path / "t.csv").write_text("a,b\n" + "0,0\n" * 30)
    with pytest.raises(ValueError, match="every value of the 24 training rows of .*t.csv' is 0"):
        load_data(str(tmp_path / "t.csv"))
