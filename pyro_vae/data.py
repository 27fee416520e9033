"""Named image datasets, their train/validation/test splits, and minibatches.

Datasets (all offline):

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, pixels 0..16).
- ``fashion-mnist``: the 70,000 28x28 images of Debian's ``dataset-fashion-mnist``
  (IDX files under ``/usr/share/datasets/fashion-mnist/``).
- ``idx:PATH``: any directory holding MNIST-format IDX files
  (``train-images-idx3-ubyte[.gz]`` and friends), e.g. real MNIST or KMNIST; colour or
  multi-channel images are stored channels last, ``[N, H, W, C]`` (:mod:`pyro_vae.idx`).
- ``images:DIR``: a folder of PNG/JPEG images, one sub-folder per class
  (:mod:`pyro_vae.image_folder`), resized or cropped only when asked.
- ``PATH.csv``, ``PATH.parquet`` (or ``table:PATH``): a table of feature columns and an
  optional label column (:mod:`pyro_vae.tables`).

Images are ``[N, H, W]`` (one grey channel) or ``[N, C, H, W]`` (C channels) throughout.

How pixels are represented follows the likelihood that will model them:

- ``bernoulli``: binary {0, 1}. *Static* binarization thresholds intensities once;
  *dynamic* binarization draws x ~ Bernoulli(intensity) afresh for every training batch
  (each epoch sees new binary images), with validation and test sets drawn once from a
  fixed seed. The two give log-likelihoods about 2 nats apart, so metrics record which.
- ``gaussian``: intensities scaled to [0, 1].
- ``categorical``: integer levels 0..L-1 (the lecture's softmax likelihood over pixel
  values); digits' native 17 levels by default, 8 levels for 8-bit images.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from pyro_vae.checks import check_count
from pyro_vae.data_source import (
    HELD_OUT,
    TRAINING_SET,
    ObservationCheck,
    ValidationSet,
    epoch_generator,
)
from pyro_vae.idx import IDXFormatError, images_channels_first, read_idx
from pyro_vae.image_folder import check_image_size, read_image_folder
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.tables import is_table_path, read_table, table_observations

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DATASET_NAMES = ("digits", "fashion-mnist", "idx:PATH", "images:DIR", "PATH.csv", "PATH.parquet")
BINARIZATIONS = ("static", "dynamic")
_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class DatasetNotFoundError(FileNotFoundError):
    """A named dataset is not installed; the message says how to get it."""


@dataclass(frozen=True)
class RawImages:
    """Integer pixel images as stored on disk, before any preprocessing.

    Attributes:
        name: the dataset's name.
        train_x: ``[N, H, W]`` (one grey channel) or ``[N, C, H, W]`` (C channels, e.g.
            RGB) integer pixels; ``train_y``: ``[N]`` labels.
        test_x, test_y: the official test split, or ``None`` when the dataset has none.
        max_value: the largest possible pixel value (16 for digits, 255 for 8-bit images).
        columns: a table's feature names, its ``train_x`` then ``[N, D]`` float64
            features; ``None`` for images.
        classes: the class names labels index, where the source has them.
    """

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray | None
    test_y: np.ndarray | None
    max_value: int
    columns: tuple[str, ...] | None = None
    classes: tuple[str, ...] | None = None


def load_raw(
    name: str,
    image_size: tuple[int, int] | None = None,
    crop: bool = False,
    columns: list[str] | None = None,
    label_column: str | None = None,
) -> RawImages:
    """Load a dataset by name: ``digits``, ``fashion-mnist``, ``idx:PATH``, ``images:DIR``,
    or a table ``PATH.csv`` / ``PATH.parquet`` / ``table:PATH`` (module docstring).

    ``image_size`` and ``crop`` apply to ``images:DIR`` only, ``columns`` and
    ``label_column`` to tables only (:func:`pyro_vae.tables.read_table`).

    Raises:
        DatasetNotFoundError: a path that is not there.
        ValueError: an unknown name, an option the source does not take, or bad data.
    """
    _check_source_options(name, image_size, crop, columns, label_column)
    if name.startswith("images:"):
        return _image_folder(name, image_size, crop)
    if _is_table(name):
        return _table(name, columns, label_column)
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = bunch.images.astype(np.int64)
        return _checked(RawImages(name, images, bunch.target.astype(np.int64), None, None, 16))
    if name == "fashion-mnist":
        if not FASHION_MNIST_DIR.is_dir():
            raise DatasetNotFoundError(
                f"data: 'fashion-mnist' is not installed (no directory {FASHION_MNIST_DIR}); "
                "install it with `sudo apt-get install dataset-fashion-mnist`, or point "
                "`idx:PATH` at a directory of MNIST-format IDX files"
            )
        return _load_idx_directory(name, FASHION_MNIST_DIR)
    if name.startswith("idx:"):
        directory = Path(name[4:]).expanduser()
        if not directory.is_dir():
            raise DatasetNotFoundError(
                f"data: {name!r} names {directory}, which is not a directory"
            )
        return _load_idx_directory(name, directory)
    raise ValueError(f"data: unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")


def _image_folder(name: str, image_size: tuple[int, int] | None, crop: bool) -> RawImages:
    folder = read_image_folder(_existing(name, name[7:], "directory"), image_size, crop)
    raw = RawImages(name, folder.images, folder.labels, None, None, 255, classes=folder.classes)
    return _checked(raw)


def _is_table(name: str) -> bool:
    return name.startswith("table:") or is_table_path(name)


def _table(name: str, columns: list[str] | None, label_column: str | None) -> RawImages:
    path = name[6:] if name.startswith("table:") else name
    table = read_table(_existing(name, path, "file"), columns, label_column)
    return _checked(
        RawImages(
            name,
            table.features,
            table.labels,
            None,
            None,
            1,
            columns=table.columns,
            classes=table.classes,
        )
    )


def _existing(name: str, path: str, kind: str) -> Path:
    """``path`` (from the dataset name ``name``), which must be an existing ``kind``."""
    found = Path(path).expanduser()
    if not (found.is_dir() if kind == "directory" else found.is_file()):
        raise DatasetNotFoundError(f"data: {name!r} names {found}, which is not a {kind}")
    return found


def _check_source_options(
    name: str, image_size: object, crop: bool, columns: object, label_column: object
) -> None:
    """Refuse an option the source ``name`` does not read, rather than ignore it."""
    check_image_size(image_size, crop)
    images, table = name.startswith("images:"), _is_table(name)
    for arg, value, ok, source in (
        ("image_size", image_size, images, "an image folder (images:DIR)"),
        ("crop", crop or None, images, "an image folder (images:DIR)"),
        ("columns", columns, table, "a table (PATH.csv, PATH.parquet or table:PATH)"),
        ("label_column", label_column, table, "a table (PATH.csv, PATH.parquet or table:PATH)"),
    ):
        if value is not None and not ok:
            raise ValueError(f"{arg}: {value!r} applies to {source} only, not to data {name!r}")


def _find_idx(directory: Path, stem: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetNotFoundError(
        f"data: {directory} has no {stem} or {stem}.gz; an IDX dataset directory needs "
        f"{', '.join(_IDX_FILES.values())} (each optionally .gz)"
    )


def _load_idx_directory(name: str, directory: Path) -> RawImages:
    arrays = {key: read_idx(_find_idx(directory, stem)) for key, stem in _IDX_FILES.items()}
    for key in ("train_images", "test_images"):
        arrays[key] = images_channels_first(arrays[key], _find_idx(directory, _IDX_FILES[key]))
    for key in ("train_images", "test_images"):
        kind = arrays[key].dtype
        if kind.kind == "f" or (kind.kind == "i" and (arrays[key] < 0).any()):
            what = "floating-point" if kind.kind == "f" else "negative"
            raise IDXFormatError(
                f"data: {_find_idx(directory, _IDX_FILES[key])} holds {what} pixels ({kind}); "
                "expected unsigned integer intensities (MNIST's 0..255 unsigned bytes)"
            )
    max_value = (
        255 if arrays["train_images"].dtype == np.uint8 else int(arrays["train_images"].max())
    )
    return _checked(
        RawImages(
            name,
            arrays["train_images"].astype(np.int64),
            arrays["train_labels"].astype(np.int64),
            arrays["test_images"].astype(np.int64),
            arrays["test_labels"].astype(np.int64),
            max_value,
        )
    )


def _checked(raw: RawImages) -> RawImages:
    for split, x, y in (("train", raw.train_x, raw.train_y), ("test", raw.test_x, raw.test_y)):
        if x is None:
            continue
        if raw.columns is not None and x.shape[1:] != (len(raw.columns),):
            raise ValueError(
                f"data: {raw.name} {split} rows have shape {x.shape}; expected "
                f"[N, {len(raw.columns)}], one value per column"
            )
        if raw.columns is None and x.ndim not in (3, 4):
            raise ValueError(
                f"data: {raw.name} {split} images have shape {x.shape}; expected [N, H, W] "
                "or [N, C, H, W]"
            )
        if y.shape != (x.shape[0],):
            raise ValueError(
                f"data: {raw.name} {split} labels have shape {y.shape}; expected ({x.shape[0]},) "
                "to match the images"
            )
    if raw.test_x is not None and raw.test_x.shape[1:] != raw.train_x.shape[1:]:
        raise ValueError(
            f"data: {raw.name} test images are {raw.test_x.shape[1:]} but train images are "
            f"{raw.train_x.shape[1:]}"
        )
    return raw


@dataclass(frozen=True)
class Preprocessing:
    """How integer pixels become the observations ``x`` a likelihood models.

    Attributes:
        likelihood: ``bernoulli``, ``gaussian`` or ``categorical``.
        binarize: ``static`` (threshold) or ``dynamic`` (fresh Bernoulli draw per batch);
            used by ``bernoulli`` only.
        threshold: intensity in (0, 1) above which a pixel is 1 under static binarization.
        levels: number of quantization levels L for ``categorical``; ``None`` keeps a
            dataset's native levels when there are at most 17 (digits) and uses 8 otherwise.
    """

    likelihood: str = "bernoulli"
    binarize: str = "static"
    threshold: float = 0.5
    levels: int | None = None

    def __post_init__(self) -> None:
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(
                f"likelihood: {self.likelihood!r} is not one of {', '.join(LIKELIHOODS)}"
            )
        if self.binarize not in BINARIZATIONS:
            raise ValueError(
                f"binarize: {self.binarize!r} is not one of {', '.join(BINARIZATIONS)}"
            )
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold: {self.threshold} is not in the open interval (0, 1)")
        if self.levels is not None and self.levels < 2:
            raise ValueError(f"levels: {self.levels} is fewer than the 2 a categorical needs")

    def resolved_levels(self, max_value: int) -> int:
        if self.levels is not None:
            return self.levels
        return max_value + 1 if max_value + 1 <= 17 else 8


@dataclass
class DataSplits:
    """Train, validation and test observations, ready for a model.

    ``train_x`` holds intensities in [0, 1] under dynamic binarization (each batch is drawn
    from them); every other tensor holds the observations themselves. A data source for
    :func:`pyro_vae.fit` (:mod:`pyro_vae.data_source`): the model is called on batches of
    images ``x`` and ELBOs are reported per datapoint.

    Observations are flattened, ``[N, D]``. ``image_shape`` says how a row is an image:
    ``(H, W)`` for one grey channel, ``(C, H, W)`` for C ≥ 2 channels (rows hold channel
    after channel, each row-major: ``x.reshape(N, C, H, W)``), ``None`` for a table, whose
    rows are D feature columns and not images.
    """

    per_datapoint: ClassVar[bool] = True

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    image_shape: tuple[int, ...] | None
    pixel_max: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def x_dim(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def dynamic(self) -> bool:
        return self.info.get("binarization") == "dynamic"

    @property
    def num_train(self) -> int:
        """N, the training images."""
        return int(self.train_x.shape[0])

    def steps_per_epoch(self, batch_size: int, drop_last: bool = False) -> int:
        """Minibatches per epoch: ⌈N / batch_size⌉, or ⌊N / batch_size⌋ with ``drop_last``.

        Raises:
            ValueError: no training images, or ``drop_last`` with a batch larger than N.
        """
        n = self.num_train
        if n < 1:
            raise ValueError("data: the training split is empty; expected at least 1 image")
        if not drop_last:
            return math.ceil(n / batch_size)
        if batch_size > n:
            raise ValueError(
                f"drop_last: with batch_size {batch_size} larger than the {n} training rows, "
                "every batch would be dropped"
            )
        return n // batch_size

    def train_batches(
        self, batch_size: int, epoch: int, seed: int, drop_last: bool = False
    ) -> ShuffledBatches:
        """Shuffled training minibatches ``(x, y)`` for one epoch (without a last partial
        batch when ``drop_last``).

        Shuffling and dynamic binarization draw from a generator seeded by
        ``(seed, epoch)``, so a resumed run sees exactly the batches an uninterrupted one would.
        """
        return ShuffledBatches(
            self.train_x,
            self.train_y,
            batch_size,
            epoch_generator(seed, epoch),
            self.dynamic,
            drop_last,
        )

    def indexed_batches(
        self, batch_size: int, epoch: int, seed: int, drop_last: bool = False
    ) -> Iterator[tuple[torch.Tensor, tuple[torch.Tensor]]]:
        """:meth:`train_batches` as the model sees them: ``(rows, (x,))``, ``rows`` the
        batch's training rows (``[B]``), ``x`` its observations (``[B, D]``)."""
        for rows, x, _ in self.train_batches(batch_size, epoch, seed, drop_last).indexed():
            yield rows, (x,)

    def check_training_data(self, check: ObservationCheck, chunk: int = 10_000) -> None:
        """Check every training image, in chunks of ``chunk`` rows, before the first step:
        a bad row in a late batch would otherwise surface mid-run as a NaN loss or a
        support error. Static observations go to ``check`` (the likelihood's test, which
        names the rows); under dynamic binarization the stored rows are intensities,
        checked here to be finite and in [0, 1] (each batch is a Bernoulli draw from them).

        Raises:
            ValueError: naming the first bad row range and what was expected.
        """
        x = self.train_x
        for start in range(0, x.shape[0], chunk):
            rows = x[start : start + chunk]
            what = f"training data (rows {start}..{start + rows.shape[0] - 1})"
            if not self.dynamic:
                check(rows, what)
            elif not torch.isfinite(rows).all() or (rows < 0).any() or (rows > 1).any():
                raise ValueError(
                    f"{what}: intensities outside [0, 1] or not finite; dynamic binarization "
                    "draws each pixel from Bernoulli(intensity)"
                )

    def validation_set(self, local_guide: bool, check: ObservationCheck) -> ValidationSet | None:
        """The held-out ELBO per datapoint on ``val_x`` (checked by ``check`` first), or
        ``None`` without validation images. For a guide with free per-datapoint parameters
        (``local_guide``), which has no posterior for held-out rows, the training set's
        ELBO per datapoint instead, on one fixed binarization under dynamic binarization.
        """
        if local_guide:
            x = self.train_x
            if self.dynamic:
                x = torch.bernoulli(x, generator=torch.Generator().manual_seed(1))
            return ValidationSet(TRAINING_SET, (x,), whole_data=False, draws=1)
        if not self.val_x.shape[0]:
            return None
        check(self.val_x, "validation data")
        return ValidationSet(HELD_OUT, (self.val_x,), whole_data=False, draws=1)


class ShuffledBatches:
    """One epoch of shuffled minibatches ``(x, y)``, gathered by index slices of one permutation.

    The random stream is exactly that of ``DataLoader(sampler=BatchSampler(RandomSampler(
    generator=g), batch_size))``: one ``randperm`` for the order, a second one that
    ``RandomSampler`` draws when it runs out (before a last partial batch, after a last full
    one), and under dynamic binarization a Bernoulli draw per batch. Without the loader's
    per-batch machinery (index lists, collation) a batch costs one ``index_select``.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        generator: torch.Generator,
        binarize: bool,
        drop_last: bool = False,
    ) -> None:
        check_count("batch_size", batch_size, 1)
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator, self.binarize, self.drop_last = generator, binarize, drop_last

    def __len__(self) -> int:
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _, x, y in self.indexed():
            yield x, y

    def indexed(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The same batches with their rows of the training set: ``(rows, x, y)``."""
        n, size = self.x.shape[0], self.batch_size
        order = torch.randperm(n, generator=self.generator)
        full = n - n % size
        for start in range(0, full, size):
            yield self._batch(order[start : start + size])
        torch.randperm(n, generator=self.generator)
        if full < n and not self.drop_last:
            yield self._batch(order[full:])

    def _batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.x.index_select(0, index)
        if self.binarize:
            x = torch.bernoulli(x, generator=self.generator)
        return index, x, self.y.index_select(0, index)


def load_data(
    name: str = "digits",
    preprocessing: Preprocessing | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    *,
    image_size: tuple[int, int] | None = None,
    crop: bool = False,
    columns: list[str] | None = None,
    label_column: str | None = None,
) -> DataSplits:
    """Load ``name`` and split it into train / validation / test observations.

    A dataset with an official test split keeps it; otherwise ``test_fraction`` of the
    images are held out. ``val_fraction`` of the remaining training images form the
    validation set (0 for none). Splits are drawn with ``split_seed``, independent of the
    training seed, so runs with different seeds are evaluated on the same test images.
    ``image_size``, ``crop`` (image folders) and ``columns``, ``label_column`` (tables) go
    to :func:`load_raw`. A table's observations are :func:`pyro_vae.tables.table_observations`'
    (standardized with the training split's statistics for a gaussian likelihood) and its
    ``image_shape`` is ``None``.
    """
    preprocessing = preprocessing or Preprocessing()
    for arg, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{arg}: {value} is not in [0, 1)")
    raw = load_raw(name, image_size, crop, columns, label_column)
    if raw.test_x is None and test_fraction == 0:
        raise ValueError(
            f"test_fraction: 0 leaves {name!r} without test images (it has no official test "
            "split); expected a fraction in (0, 1)"
        )
    images, labels = _split(raw, val_fraction, test_fraction, split_seed)
    if images["train"].shape[0] < 2:
        raise ValueError(
            f"data: {name!r} leaves {images['train'].shape[0]} training images after the test "
            f"and validation splits (test_fraction={test_fraction}, val_fraction={val_fraction}); "
            "expected at least 2"
        )
    info: dict[str, Any] = {
        "dataset": name,
        "likelihood": preprocessing.likelihood,
        **{f"num_{split}": int(x.shape[0]) for split, x in images.items()},
        "split_seed": split_seed,
        **({"classes": list(raw.classes)} if raw.classes is not None else {}),
    }
    image_shape: tuple[int, ...] | None = tuple(int(s) for s in raw.train_x.shape[1:])
    if raw.columns is not None:
        image_shape = None
        obs, pixel_max = table_observations(
            images, preprocessing.likelihood, preprocessing.levels, raw.columns, info
        )
    else:
        pixels = int(np.prod(raw.train_x.shape[1:]))
        intensity = {
            split: torch.as_tensor(x.reshape(len(x), pixels) / raw.max_value, dtype=torch.float32)
            for split, x in images.items()
        }
        obs, pixel_max = _observations(intensity, preprocessing, raw.max_value, split_seed, info)
    return DataSplits(
        train_x=obs["train"],
        train_y=torch.as_tensor(labels["train"]),
        val_x=obs["val"],
        val_y=torch.as_tensor(labels["val"]),
        test_x=obs["test"],
        test_y=torch.as_tensor(labels["test"]),
        image_shape=image_shape,
        pixel_max=pixel_max,
        info=info,
    )


def _split(
    raw: RawImages, val_fraction: float, test_fraction: float, split_seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Images and labels by split (``train``, ``val``, ``test``, in that order): the
    official test split or ``test_fraction`` of the images, then ``val_fraction`` of the
    rest, drawn by permutations of one generator seeded with ``split_seed``."""
    rng = np.random.default_rng(split_seed)
    train_x, train_y = raw.train_x, raw.train_y
    if raw.test_x is None:
        order = rng.permutation(train_x.shape[0])
        n_test = math.ceil(test_fraction * len(order))
        test_x, test_y = train_x[order[:n_test]], train_y[order[:n_test]]
        train_x, train_y = train_x[order[n_test:]], train_y[order[n_test:]]
    else:
        test_x, test_y = raw.test_x, raw.test_y
    order = rng.permutation(train_x.shape[0])
    n_val = math.ceil(val_fraction * len(order))
    val_x, val_y = train_x[order[:n_val]], train_y[order[:n_val]]
    train_x, train_y = train_x[order[n_val:]], train_y[order[n_val:]]
    images = {"train": train_x, "val": val_x, "test": test_x}
    return images, {"train": train_y, "val": val_y, "test": test_y}


def _observations(
    intensity: dict[str, torch.Tensor],
    preprocessing: Preprocessing,
    max_value: int,
    split_seed: int,
    info: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], float]:
    """The observations of each split from its intensities in [0, 1] (module docstring),
    and the largest pixel value; what was done is added to ``info``."""
    if preprocessing.likelihood == "gaussian":
        return intensity, 1.0
    if preprocessing.likelihood == "categorical":
        levels = preprocessing.resolved_levels(max_value)
        info["levels"] = levels
        obs = {
            k: torch.clamp(torch.floor(v * levels), max=levels - 1) for k, v in intensity.items()
        }
        return obs, float(levels - 1)
    info["binarization"] = preprocessing.binarize
    if preprocessing.binarize == "static":
        info["threshold"] = preprocessing.threshold
        return {k: (v > preprocessing.threshold).float() for k, v in intensity.items()}, 1.0
    fixed = torch.Generator().manual_seed(split_seed + 1)
    return {
        "train": intensity["train"],
        "val": torch.bernoulli(intensity["val"], generator=fixed),
        "test": torch.bernoulli(intensity["test"], generator=fixed),
    }, 1.0
