"""Named image datasets, their train/validation/test splits, and minibatches.

Datasets (all offline):

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, pixels 0..16).
- ``fashion-mnist``: the 70,000 28x28 images of Debian's ``dataset-fashion-mnist``
  (IDX files under ``/usr/share/datasets/fashion-mnist/``).
- ``idx:PATH``: any directory holding MNIST-format IDX files
  (``train-images-idx3-ubyte[.gz]`` and friends), e.g. real MNIST or KMNIST.
- ``PATH.npy``: an array opened memory-mapped, so data larger than memory train; its
  splits are index sets into the map and every batch, check and evaluation chunk is
  gathered from it when used (:mod:`pyro_vae.array_source` says what it may hold and
  where its labels go). ``PATH.npz`` (``x``, optional ``y``) is read into memory whole.
- ``images:DIR``: a folder of PNG/JPEG images, one sub-folder per class
  (:mod:`pyro_vae.image_folder`), resized or cropped only when asked.
- ``PATH.csv``, ``PATH.parquet`` (or ``table:PATH``): a table of feature columns and an
  optional label column (:mod:`pyro_vae.tables`).
- From Python, also a numpy array or a ``torch.utils.data.Dataset`` (in memory).

Colour or multi-channel IDX images are stored channels last, ``[N, H, W, C]``
(:mod:`pyro_vae.idx`). Images are ``[N, H, W]`` (one grey channel) or ``[N, C, H, W]``
(C channels) throughout.

Which loader a ``--data`` string goes to is decided in one place,
:data:`pyro_vae.datasets.SOURCES`; :mod:`pyro_vae.datasets` reads them as stored.

How pixels are represented follows the likelihood that will model them:

- ``bernoulli``: binary {0, 1}. *Static* binarization thresholds intensities once;
  *dynamic* binarization draws x ~ Bernoulli(intensity) afresh for every training batch
  (each epoch sees new binary images), with validation and test sets drawn once from a
  fixed seed. The two give log-likelihoods about 2 nats apart, so metrics record which.
- ``gaussian``, ``continuous-bernoulli``: intensities scaled to [0, 1].
- ``categorical``: integer levels 0..L-1 (the lecture's softmax likelihood over pixel
  values); digits' native 17 levels by default, 8 levels for 8-bit images.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import torch

from pyro_vae.checks import as_real, check_count
from pyro_vae.data_source import (
    HELD_OUT,
    TRAINING_SET,
    ObservationCheck,
    ValidationSet,
    epoch_generator,
)
from pyro_vae.datasets import RawImages, load_raw, raw_from_python, row_unit
from pyro_vae.labels import labelled_subset
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.mapped_rows import CHUNK_ROWS, MappedRows
from pyro_vae.moved import hand_over
from pyro_vae.tables import (
    refuse_binarization,
    table_observations,
)

BINARIZATIONS = ("static", "dynamic")

# Moved to pyro_vae.datasets (the sources, read as stored); resolved on first use, with a
# warning. RawImages, load_raw, raw_from_python and row_unit, which this module uses, are
# also still here.
_MOVED = {
    "DATASET_NAMES",
    "DatasetKind",
    "DatasetNotFoundError",
    "FASHION_MNIST_DIR",
    "SOURCES",
    "resolved_name",
}
_WARNED: set[str] = set()


def __getattr__(name: str) -> Any:
    return hand_over(__name__, "pyro_vae.datasets", _MOVED, name, _WARNED)


@dataclass(frozen=True)
class Preprocessing:
    """How integer pixels become the observations ``x`` a likelihood models.

    Attributes:
        likelihood: one of :data:`pyro_vae.likelihoods.LIKELIHOODS`.
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
        # a number first: a string edited into config.json failed the comparison in a
        # traceback (tester BY)
        number = as_real(self.threshold)
        if number is None or not 0.0 < number < 1.0:
            raise ValueError(
                f"threshold: {self.threshold!r} is not a number in the open interval (0, 1)"
            )
        object.__setattr__(self, "threshold", number)  # frozen: its plain float
        whole = isinstance(self.levels, int) and not isinstance(self.levels, bool)
        if self.levels is not None and not (whole and self.levels >= 2):
            raise ValueError(
                f"levels: {self.levels!r} is not a whole number of at least the 2 a "
                "categorical needs"
            )

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
    images ``x`` and ELBOs are reported per datapoint. From a memory-mapped ``.npy`` the
    ``x`` splits are :class:`~pyro_vae.mapped_rows.MappedRows` (index sets into the map,
    read a batch or chunk at a time) rather than tensors.

    Observations are flattened, ``[N, D]``. ``image_shape`` says how a row is an image:
    ``(H, W)`` for one grey channel, ``(C, H, W)`` for C ≥ 2 channels (rows hold channel
    after channel, each row-major: ``x.reshape(N, C, H, W)``), ``None`` for a table, whose
    rows are D feature columns and not images, and for an ``[N, D]`` array's vectors.

    ``train_observed`` (``BoolTensor [N]``) says which training labels a model that uses
    labels may see (:mod:`pyro_vae.labels`): all of them unless
    :meth:`with_labelled_subset` drew a subset (``observed_rows``).
    """

    per_datapoint: ClassVar[bool] = True

    train_x: torch.Tensor | MappedRows
    train_y: torch.Tensor
    val_x: torch.Tensor | MappedRows
    val_y: torch.Tensor
    test_x: torch.Tensor | MappedRows
    test_y: torch.Tensor
    image_shape: tuple[int, ...] | None
    pixel_max: float
    info: dict[str, Any] = field(default_factory=dict)
    observed_rows: torch.Tensor | None = field(default=None, repr=False)

    @property
    def train_observed(self) -> torch.Tensor:
        """Which training labels are observed, ``BoolTensor [N]``."""
        if self.observed_rows is None:
            return torch.ones(self.num_train, dtype=torch.bool)
        return self.observed_rows

    def with_labelled_subset(
        self, *, fraction: float | None = None, count: int | None = None, seed: int = 0
    ) -> DataSplits:
        """A copy whose :attr:`train_observed` marks a seeded, class-balanced subset of
        the training labels (:func:`pyro_vae.labels.labelled_subset`: ``count`` labels,
        an equal number per class, or ``fraction`` of each class); ``info`` records
        ``num_labelled``. Neither given: all observed.

        Raises:
            ValueError: the data came without labels (``info["labelled"]`` false), both
                or bad values of ``fraction`` and ``count`` (named).
        """
        if (fraction is not None or count is not None) and self.info.get("labelled") is False:
            given = "fraction" if fraction is not None else "count"
            raise ValueError(
                f"{given}: {fraction if fraction is not None else count!r}, but "
                f"{self.info.get('dataset', 'the data')!r} came without labels (every "
                "label is 0); expected data with labels"
            )
        observed = labelled_subset(self.train_y, fraction=fraction, count=count, seed=seed)
        info = {**self.info, "num_labelled": int(observed.sum())}
        return replace(self, info=info, observed_rows=observed)

    @property
    def x_dim(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def unit(self) -> str:
        """``"rows"`` or ``"images"``, what the rows are called (:func:`row_unit` of
        :attr:`image_shape`)."""
        return row_unit(self.image_shape)

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

    def check_training_data(self, check: ObservationCheck, chunk: int = CHUNK_ROWS) -> None:
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
                fixed = torch.Generator().manual_seed(1)
                x = torch.cat([torch.bernoulli(rows, generator=fixed) for rows in _chunks(x)])
            return ValidationSet(TRAINING_SET, (x,), whole_data=False, draws=1)
        if not self.val_x.shape[0]:
            return None
        if isinstance(self.val_x, MappedRows):
            for start in range(0, len(self.val_x), CHUNK_ROWS):
                rows = self.val_x[start : start + CHUNK_ROWS]
                check(rows, f"validation data (rows {start}..{start + rows.shape[0] - 1})")
        else:
            check(self.val_x, "validation data")
        return ValidationSet(HELD_OUT, (self.val_x,), whole_data=False, draws=1)


def _chunks(x: torch.Tensor | MappedRows) -> list[torch.Tensor]:
    """``x`` whole (a tensor) or in chunks of rows (a :class:`MappedRows`)."""
    return list(x.chunks()) if isinstance(x, MappedRows) else [x]


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
        order = torch.randperm(n, generator=self.generator, device=self.generator.device)
        full = n - n % size
        for start in range(0, full, size):
            yield self._batch(order[start : start + size])
        torch.randperm(n, generator=self.generator, device=self.generator.device)
        if full < n and not self.drop_last:
            yield self._batch(order[full:])

    def _batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.x.index_select(0, index)
        if self.binarize:
            x = torch.bernoulli(x, generator=self.generator)
        return index, x, self.y.index_select(0, index)


def load_data(
    name: Any = "digits",
    preprocessing: Preprocessing | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    labels: Any = None,
    *,
    image_size: tuple[int, int] | None = None,
    crop: bool = False,
    columns: list[str] | None = None,
    label_column: str | None = None,
    standardization: dict[str, Any] | None = None,
    layout: str | None = None,
) -> DataSplits:
    """Load ``name`` and split it into train / validation / test observations.

    ``name``: a ``--data`` string (:data:`pyro_vae.datasets.SOURCES`: ``digits``,
    ``fashion-mnist``, ``idx:PATH``, ``PATH.npy``, ``PATH.npz``, ``images:DIR``, a table),
    or from Python a numpy array (``labels``: its ``[N]`` integer labels, optional) or a
    map-style ``torch.utils.data.Dataset`` whose items are ``x`` or ``(x, y)``
    (:mod:`pyro_vae.array_source` says what an array may hold). An official test split is
    kept; otherwise ``test_fraction`` of the images are held out, and ``val_fraction`` of
    the rest validate (0: none), drawn with ``split_seed``, not the training seed.

    The splits are index sets into the stored array. A memory-mapped ``.npy`` keeps them
    so: ``train_x``, ``val_x`` and ``test_x`` are :class:`~pyro_vae.mapped_rows.MappedRows`
    gathering each batch or chunk from the map when used (dynamic binarization's validation
    and test draws made once, chunk by chunk). Every other source is gathered into tensors
    here; both give the same rows bit for bit.

    ``image_size``, ``crop`` (image folders), ``columns``, ``label_column`` (tables) and
    ``layout`` (a 4-D ``.npy``/``.npz``: ``"channels-first"`` or ``"channels-last"``;
    ``None`` guesses, refusing a shape that could be either) go to
    :func:`~pyro_vae.datasets.load_raw`; a table's observations are :func:`pyro_vae.tables.
    table_observations`' (``standardization``: a run's own), its ``image_shape`` ``None``.

    Raises:
        ValueError: a fraction outside [0, 1), no test images, fewer than 2 training
            images, or data its source refuses (named).
        TypeError: ``name`` of a kind that is not data, or ``labels`` without an array.
        pyro_vae.datasets.DatasetNotFoundError: a named dataset or file that is not there.
    """
    preprocessing = preprocessing or Preprocessing()
    for arg, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{arg}: {value} is not in [0, 1)")
    options = {"image_size": image_size, "crop": crop, "columns": columns, "layout": layout}
    raw = _raw(name, labels, **options, label_column=label_column)
    if raw.test_x is None and test_fraction == 0:
        raise ValueError(
            f"test_fraction: 0 leaves {raw.name!r} without test {raw.unit} (it has no official "
            "test split); expected a fraction in (0, 1)"
        )
    rows = _split_rows(raw, val_fraction, test_fraction, split_seed)
    _refuse_splits_too_small(raw, rows, val_fraction, test_fraction)
    info: dict[str, Any] = {
        "dataset": raw.name,
        "likelihood": preprocessing.likelihood,
        **{f"num_{split}": int(index.shape[0]) for split, (_, _, index) in rows.items()},
        "split_seed": split_seed,
        **({"classes": list(raw.classes)} if raw.classes is not None else {}),
        **_source_notes(raw),
    }
    obs, pixel_max, image_shape = _prepared(
        raw, rows, preprocessing, split_seed, info, standardization
    )
    return DataSplits(
        train_x=obs["train"],
        train_y=torch.as_tensor(rows["train"][1][rows["train"][2]]),
        val_x=obs["val"],
        val_y=torch.as_tensor(rows["val"][1][rows["val"][2]]),
        test_x=obs["test"],
        test_y=torch.as_tensor(rows["test"][1][rows["test"][2]]),
        image_shape=image_shape,
        pixel_max=pixel_max,
        info=info,
    )


def _source_notes(raw: RawImages) -> dict[str, Any]:
    """What ``fit`` notes of how the source was read, for ``info`` (metrics.json): an image
    folder's files left out and its colour files; where the full intensity of integer
    pixels was taken as their largest value (a type other than ``uint8``), that value and
    the stored type (tester BM: int64 pixels 0..200, ``np.array(pixels)``'s default type,
    were read as x / 200 where the same values in uint8 are read as x / 255, unsaid)."""
    notes: dict[str, Any] = {}
    if raw.left_out:
        notes["left_out"] = list(raw.left_out)
    if raw.colour_files:
        notes["colour_files"] = list(raw.colour_files)
    if raw.text_columns:
        notes["text_columns"] = list(raw.text_columns)
    if raw.max_value_from_data:
        notes["full_intensity"] = {"value": int(raw.max_value), "dtype": str(raw.train_x.dtype)}
    return notes


def _prepared(
    raw: RawImages,
    rows: dict[str, Split],
    preprocessing: Preprocessing,
    split_seed: int,
    info: dict[str, Any],
    standardization: dict[str, Any] | None = None,
) -> tuple[dict[str, torch.Tensor | MappedRows], float, tuple[int, ...] | None]:
    """Each split's observations, the largest value, and the image shape (``None`` for a
    table, standardized with ``standardization`` where given); what was done is added to
    ``info``."""
    mapped = isinstance(raw.train_x, np.memmap)
    if mapped:
        info["memory_mapped"] = True
    if not raw.labelled:
        info["labelled"] = False
    if raw.provenance is not None:
        info["provenance"] = raw.provenance
    image_shape: tuple[int, ...] | None = tuple(int(s) for s in raw.train_x.shape[1:])
    if len(image_shape) < 2:  # [N, D] vectors are rows, as a table's are: each reader
        image_shape = None  # that draws images asks this one field (tester CE: diagnose
        # and --tensorboard drew an [N, D] array's rows as images of shape (D,) and failed)
    if raw.columns is not None:
        image_shape = None
        defaults = Preprocessing()
        refuse_binarization(
            {
                key: getattr(preprocessing, key)
                for key in ("binarize", "threshold")
                if getattr(preprocessing, key) != getattr(defaults, key)
            }
        )
        features = {key: array[index] for key, (array, _, index) in rows.items()}
        obs, pixel_max = table_observations(
            features, preprocessing.likelihood, preprocessing.levels, raw.columns, info,
            standardization,
        )  # fmt: skip
    else:
        obs, pixel_max = _observations(raw, rows, preprocessing, split_seed, info, mapped)
    _refuse_constant_training_set(raw, rows["train"], obs["train"], preprocessing, info)
    return obs, pixel_max, image_shape


def _refuse_constant_training_set(
    raw: RawImages,
    train: Split,
    x: torch.Tensor | MappedRows,
    preprocessing: Preprocessing,
    info: dict[str, Any],
) -> None:
    """Refuse training observations ``x`` in which every value is the same (under dynamic
    binarization: every intensity 0, or every one 1, so every draw is), as the normal
    likelihood's standardization refuses a constant table column: a model of them learns
    nothing and scores deceptively well (tester U: digits saved as uint8 0..16, read as
    0..16/255, binarized to blank images and trained to a test ELBO of -0.56). ``train``:
    the training split's stored rows, whose range the message names.

    Raises:
        ValueError: naming the data, the stored dtype and range, what preprocessing made
            of them and what to change.
    """
    value = _constant_value(x)
    if value is None or (info.get("binarization") == "dynamic" and 0 < value < 1):
        return
    array, _, index = train
    low, high = _stored_range(array, index)
    stored = f"{array.dtype} values {low:g}..{high:g}"
    if raw.columns is not None:
        raise ValueError(
            f"data: every value of the {x.shape[0]} training rows of {raw.name!r} is "
            f"{value:g} after preprocessing (its feature columns hold {stored}), so there is "
            "nothing to model; expected columns that vary (choose them with --columns)"
        )
    top = raw.max_value
    read = f"its {stored} are read as intensities {low:g}..{high:g}/{top}"
    read += f" = {low / top:.3g}..{high / top:.3g}" if top != 1 else ""
    if raw.integer and array.dtype == np.uint8:
        read += " (uint8 is read as 0..255)"
    made, change = _what_preprocessing_made(preprocessing, info, value, low / top, high / top)
    rescale = (
        f"rescale the images' pixels to the full range 0..{top} (times {top}/{high:g})"
        if str(raw.name).startswith("images:")
        else "rescale the data to the full range (uint8 0..255, or float intensities in "
        f"[0, 1]: x / {high:g} for values 0..{high:g})"
    )
    what = "the stored values are all the same; expected images that vary"
    what = what if low == high else rescale + change
    raise ValueError(
        f"data: every pixel of the {x.shape[0]} training images of {raw.name!r} is "
        f"{value:g} after preprocessing: {read}, and {made}; a model would learn blank "
        f"images and score deceptively well; {what}"
    )


def _what_preprocessing_made(
    preprocessing: Preprocessing, info: dict[str, Any], value: float, low: float, high: float
) -> tuple[str, str]:
    """What preprocessing made of intensities ``low``..``high`` (every one ``value``), and
    the other settings that would keep them apart (", or ..."; empty where none would)."""
    if info.get("binarization") == "static":
        threshold = info["threshold"]
        made = f"static binarization at --threshold {threshold:g} makes each of them {value:g}"
        between = f" between {low:.3g} and {high:.3g}" if low < high else ""
        return made, f", or choose a --threshold{between}, or --binarize dynamic"
    if info.get("binarization") == "dynamic":
        return f"dynamic binarization draws each of them as {value:g}", ""
    if preprocessing.likelihood == "categorical":
        levels = info["levels"]
        made = f"{levels} categorical levels put each of them at level {value:g}"
        more = math.ceil(1 / high) if high > 0 else None
        return made, f", or quantize to {more} or more --levels" if more else ""
    return f"{preprocessing.likelihood} observations keep them as they are", ""


def _constant_value(x: torch.Tensor | MappedRows) -> float | None:
    """The one value every entry of ``x`` holds, or ``None`` when they differ (read chunk
    by chunk, stopping at the first chunk that shows two values)."""
    value = None
    for chunk in _chunks(x) if isinstance(x, MappedRows) else [x]:
        if not chunk.numel():
            continue
        low, high = float(chunk.min()), float(chunk.max())
        if low != high or value not in (None, low):
            return None
        value = low
    return value


def _stored_range(array: np.ndarray, index: np.ndarray) -> tuple[float, float]:
    """The smallest and largest stored value of rows ``index`` of ``array`` (a memory map
    is read in chunks of :data:`CHUNK_ROWS` rows)."""
    low, high = math.inf, -math.inf
    for start in range(0, len(index), CHUNK_ROWS):
        rows = np.asarray(array[np.sort(index[start : start + CHUNK_ROWS])])
        low, high = min(low, float(rows.min())), max(high, float(rows.max()))
    return low, high


def _raw(name: Any, labels: Any, **options: Any) -> RawImages:
    if not isinstance(name, str):
        # a 4-D array's or dataset's layout applies to it (tester FA: a Dataset's refusal
        # named layout=, which was then refused)
        given = [a for a, v in options.items() if v not in (None, False) and a != "layout"]
        if given:
            raise ValueError(
                f"{given[0]}: {options[given[0]]!r} applies to a named image folder or "
                f"table, not to data given as a {type(name).__name__}"
            )
        return raw_from_python(name, labels, options["layout"])
    if labels is not None:
        raise TypeError(
            f"labels: given with the dataset {name!r}, which brings its own; labels go with a "
            "numpy array"
        )
    return load_raw(name, **options)


Split = tuple[np.ndarray, np.ndarray, np.ndarray]
"""A split as an index set: the stored images, their labels, and the split's rows of them."""


def _refuse_splits_too_small(
    raw: RawImages, rows: dict[str, Split], val_fraction: float, test_fraction: float
) -> None:
    """Refuse splits that leave no test rows or fewer than 2 training rows, before any
    work."""
    if rows["test"][2].shape[0] == 0:  # an official test split of none (tester EK: an IDX
        # folder's empty t10k file trained to the end, and no command could score the run)
        raise ValueError(
            f"data: {raw.name!r} has an official test split of 0 {raw.unit}; expected at "
            f"least one test {raw.unit.rstrip('s')} to score the model on"
        )
    if rows["train"][2].shape[0] < 2:
        raise ValueError(
            f"data: {raw.name!r} leaves {rows['train'][2].shape[0]} training {raw.unit} after "
            f"the test and validation splits (test_fraction={test_fraction}, "
            f"val_fraction={val_fraction}); expected at least 2"
        )


def _split_rows(
    raw: RawImages, val_fraction: float, test_fraction: float, split_seed: int
) -> dict[str, Split]:
    """The rows of each split (``train``, ``val``, ``test``, in that order): the official
    test split or ``test_fraction`` of the images, then ``val_fraction`` of the rest,
    drawn by permutations of one generator seeded with ``split_seed``. No image is read."""
    rng = np.random.default_rng(split_seed)
    train = np.arange(raw.train_x.shape[0])
    if raw.test_x is None:
        order = rng.permutation(train.shape[0])
        n_test = math.ceil(test_fraction * len(order))
        test = (raw.train_x, raw.train_y, order[:n_test])
        train = order[n_test:]
    else:
        test = (raw.test_x, raw.test_y, np.arange(raw.test_x.shape[0]))
    order = rng.permutation(train.shape[0])
    n_val = math.ceil(val_fraction * len(order))
    return {
        "train": (raw.train_x, raw.train_y, train[order[n_val:]]),
        "val": (raw.train_x, raw.train_y, train[order[:n_val]]),
        "test": test,
    }


def _observations(
    raw: RawImages,
    rows: dict[str, Split],
    preprocessing: Preprocessing,
    split_seed: int,
    info: dict[str, Any],
    mapped: bool,
) -> tuple[dict[str, torch.Tensor | MappedRows], float]:
    """The observations of each split (module docstring), as :class:`MappedRows` when
    ``mapped`` (else gathered into tensors), and the largest pixel value; what was done is
    added to ``info``."""
    pixels = int(np.prod(raw.train_x.shape[1:]))
    max_value = raw.max_value

    def intensity(stored: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(
            stored.reshape(stored.shape[0], pixels) / max_value, dtype=torch.float32
        )

    observe, pixel_max = intensity, 1.0
    if preprocessing.likelihood == "categorical":
        levels = preprocessing.resolved_levels(max_value if raw.integer else 255)
        info["levels"] = levels
        pixel_max = float(levels - 1)

        def observe(stored: np.ndarray) -> torch.Tensor:
            return torch.clamp(torch.floor(intensity(stored) * levels), max=levels - 1)

    elif preprocessing.likelihood == "bernoulli":
        info["binarization"] = preprocessing.binarize
        if preprocessing.binarize == "static":
            info["threshold"] = threshold = preprocessing.threshold

            def observe(stored: np.ndarray) -> torch.Tensor:
                return (intensity(stored) > threshold).float()

    split = {
        key: MappedRows(array, index, observe, pixels) for key, (array, _, index) in rows.items()
    }
    obs = {key: x if mapped else x.to_tensor() for key, x in split.items()}
    if preprocessing.likelihood == "bernoulli" and preprocessing.binarize == "dynamic":
        fixed = torch.Generator().manual_seed(split_seed + 1)
        for key in ("val", "test"):  # drawn once, in this order, chunk by chunk
            drawn = [torch.bernoulli(chunk, generator=fixed) for chunk in split[key].chunks()]
            obs[key] = torch.cat(drawn) if drawn else split[key].to_tensor()
    return obs, pixel_max
