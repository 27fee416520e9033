"""Datasets read as stored, before any preprocessing: the ``--data`` strings and their
loaders, each giving :class:`RawImages`.

Which loader a ``--data`` string goes to is decided in one place, :data:`SOURCES`
(``digits``, ``fashion-mnist``, ``idx:PATH``, ``PATH.npy``, ``PATH.npz``, ``images:DIR``,
``PATH.csv``, ``PATH.parquet``, ``table:PATH``; :mod:`pyro_vae.data` lists what each holds).
From Python, :func:`raw_from_python` takes a numpy array or a ``torch.utils.data.Dataset``.
:mod:`pyro_vae.data` preprocesses what these return and splits it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyro_vae.array_source import (
    ArrayImages,
    check_layout,
    from_array,
    from_dataset,
    is_array_path,
    read_array_file,
)
from pyro_vae.idx import IDXFormatError, images_channels_first, read_idx
from pyro_vae.image_folder import check_image_size, read_image_folder
from pyro_vae.provenance import file_provenance
from pyro_vae.tables import is_table_path, read_table

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class DatasetNotFoundError(FileNotFoundError):
    """A named dataset is not installed; the message says how to get it."""


def row_unit(image_shape: tuple[int, ...] | None) -> str:
    """What rows of data whose rows are ``image_shape`` are called, the one rule for it:
    ``"images"`` for a shape of 2 or more dimensions (``(H, W)``, ``(C, H, W)``), else
    ``"rows"``: a table's (``None``) and vectors (``(D,)``, an ``.npy`` of ``[N, D]``),
    whose error is not per pixel (tester U; tester AE: a one-row table was refused for
    "0 training images")."""
    return "images" if image_shape is not None and len(image_shape) >= 2 else "rows"


@dataclass(frozen=True)
class RawImages:
    """Pixel images as stored, before any preprocessing.

    Attributes:
        name: the dataset's name.
        train_x: ``[N, H, W]`` integer pixels (an array source: also ``[N, D]`` or
            ``[N, C, H, W]``, or float intensities in [0, 1]; a ``np.memmap`` for ``.npy``);
            ``train_y``: ``[N]`` labels.
        test_x, test_y: the official test split, or ``None`` when the dataset has none.
        max_value: the stored value of full intensity (16 for digits, 255 for 8-bit
            images, 1 for float intensities).
        integer: whether pixels are integers (else float intensities).
        labelled: whether the labels came with the data (else all 0).
        provenance: the files' provenance (:mod:`pyro_vae.provenance`); ``None`` for data
            without files of their own (digits, arrays from Python).
        columns: a table's feature names, its ``train_x`` then ``[N, D]`` float64
            features; ``None`` for images.
        classes: the class names labels index, where the source has them.
        left_out: an image folder's files that are not images of a class (not read).
        colour_files: an image folder's colour images where it mixes grey and colour
            (they made every image RGB).
        text_columns: a table's columns of text, left out of its features.
        max_value_from_data: whether ``max_value`` is the data's largest value (integer
            pixels of a type other than ``uint8``, whose full intensity the type does not
            tell), which ``fit`` says in a note.
    """

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray | None
    test_y: np.ndarray | None
    max_value: int
    integer: bool = True
    labelled: bool = True
    provenance: dict[str, Any] | None = None
    columns: tuple[str, ...] | None = None
    classes: tuple[str, ...] | None = None
    left_out: tuple[str, ...] = ()
    colour_files: tuple[str, ...] = ()
    text_columns: tuple[str, ...] = ()
    max_value_from_data: bool = False

    @property
    def unit(self) -> str:
        """``"rows"`` or ``"images"`` (:func:`row_unit`; a table's are rows)."""
        return row_unit(None if self.columns is not None else tuple(self.train_x.shape[1:]))


@dataclass(frozen=True)
class DatasetKind:
    """One kind of ``--data`` string: how users write it, whether a string is one, how it
    loads, and its canonical form for config.json (absolute paths, so a run folder
    rebuilds its data from any working directory)."""

    pattern: str
    matches: Callable[[str], bool]
    load: Callable[..., RawImages]
    resolve: Callable[[str], str] = staticmethod(lambda name: name)
    options: tuple[str, ...] = ()  # the load_raw options its loader takes, by name


def _digits(name: str) -> RawImages:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.int64)
    return _checked(RawImages(name, images, bunch.target.astype(np.int64), None, None, 16))


def _fashion_mnist(name: str) -> RawImages:
    if not FASHION_MNIST_DIR.is_dir():
        raise DatasetNotFoundError(
            f"data: 'fashion-mnist' is not installed (no directory {FASHION_MNIST_DIR}); "
            "install it with `sudo apt-get install dataset-fashion-mnist`, or point "
            "`idx:PATH` at a directory of MNIST-format IDX files"
        )
    return _load_idx_directory(name, FASHION_MNIST_DIR)


def _idx(name: str) -> RawImages:
    directory = Path(name[4:]).expanduser()
    if not directory.is_dir():
        raise DatasetNotFoundError(f"data: {name!r} names {directory}, which is not a directory")
    return _load_idx_directory(name, directory)


def _array_file(name: str, layout: str | None = None) -> RawImages:
    try:
        arrays = read_array_file(name, layout)
    except FileNotFoundError as err:
        raise DatasetNotFoundError(str(err)) from err
    return _from_arrays(name, arrays, file_provenance(Path(name), arrays.files, *_kind(arrays)))


def _kind(arrays: ArrayImages) -> tuple[tuple[int, ...], np.dtype]:
    return tuple(arrays.x.shape), arrays.x.dtype


def _absolute(prefix: str = "") -> Callable[[str], str]:
    def resolve(name: str) -> str:
        return prefix + str(Path(name[len(prefix) :]).expanduser().resolve())

    return resolve


_TABLE = ("columns", "label_column")


def _image_folder(name: str, image_size: tuple[int, int] | None, crop: bool) -> RawImages:
    path = _existing(name, name[7:], "directory")
    folder = read_image_folder(path, image_size, crop)
    provenance = file_provenance(
        path,
        folder.files,
        folder.images.shape,
        folder.images.dtype,
        classes=folder.classes,
        contents=(folder.images, folder.labels),
    )
    return _checked(
        RawImages(
            name,
            folder.images,
            folder.labels,
            None,
            None,
            255,
            provenance=provenance,
            classes=folder.classes,
            left_out=tuple(str(f) for f in folder.left_out),
            colour_files=tuple(str(f) for f in folder.colour),
        )
    )


def _table(name: str, columns: list[str] | None, label_column: str | None) -> RawImages:
    path = _existing(name, name[6:] if name.startswith("table:") else name, "file")
    table = read_table(path, columns, label_column)
    shape, dtype = table.features.shape, table.features.dtype
    provenance = file_provenance(
        path,
        [path],
        shape,
        dtype,
        columns=table.columns,
        classes=table.classes,
        contents=(table.features, table.labels),
    )
    return _checked(
        RawImages(
            name,
            table.features,
            table.labels,
            None,
            None,
            1,
            integer=False,
            labelled=label_column is not None,
            provenance=provenance,
            columns=table.columns,
            classes=table.classes,
            text_columns=table.text_columns,
        )
    )


def _existing(name: str, path: str, kind: str) -> Path:
    """``path`` (from the dataset name ``name``), which must be an existing ``kind``."""
    found = Path(path).expanduser()
    if not (found.is_dir() if kind == "directory" else found.is_file()):
        raise DatasetNotFoundError(f"data: {name!r} names {found}, which is not a {kind}")
    return found


SOURCES: list[DatasetKind] = [
    DatasetKind("digits", lambda n: n == "digits", _digits),
    DatasetKind("fashion-mnist", lambda n: n == "fashion-mnist", _fashion_mnist),
    # the prefixed kinds before the suffixed ones: a prefix says what the path is
    # (``images:d/x.npy`` was read as an array at the path 'images:d/x.npy': tester CC)
    DatasetKind("idx:PATH", lambda n: n.startswith("idx:"), _idx, _absolute("idx:")),
    DatasetKind(
        "images:DIR",
        lambda n: n.startswith("images:"),
        _image_folder,
        _absolute("images:"),
        ("image_size", "crop"),
    ),
    DatasetKind(
        "table:PATH", lambda n: n.startswith("table:"), _table, _absolute("table:"), _TABLE
    ),
    DatasetKind(
        "PATH.npy",
        lambda n: is_array_path(n) and n.lower().endswith(".npy"),
        _array_file,
        _absolute(),
        ("layout",),
    ),
    DatasetKind(
        "PATH.npz",
        lambda n: is_array_path(n) and n.lower().endswith(".npz"),
        _array_file,
        _absolute(),
        ("layout",),
    ),
    DatasetKind(
        "PATH.csv",
        lambda n: is_table_path(n) and not n.lower().endswith(".parquet"),
        _table,
        _absolute(),
        _TABLE,
    ),
    DatasetKind(
        "PATH.parquet", lambda n: n.lower().endswith(".parquet"), _table, _absolute(), _TABLE
    ),
]
"""The ``--data`` strings, tried in order: the one place a new kind of source is added."""

DATASET_NAMES = tuple(kind.pattern for kind in SOURCES)


def _source_of(name: str) -> DatasetKind:
    for kind in SOURCES:
        if isinstance(name, str) and kind.matches(name):
            return kind
    folder = isinstance(name, str) and Path(name).expanduser().is_dir()
    hint = f" (a folder of images is given as images:{name})" if folder else ""
    raise ValueError(
        f"data: unknown dataset {name!r}{hint}; expected one of {', '.join(DATASET_NAMES)}"
    )


def names_a_table(name: str) -> bool:
    """Whether the dataset ``name`` is read as a table (``table:PATH``, ``.csv``,
    ``.parquet``: the kinds :func:`load_raw` reads with its table reader); False for a
    name of no known kind."""
    try:
        return _source_of(name).load is _table
    except ValueError:
        return False


def resolved_name(name: str) -> str:
    """``name`` as config.json records it: paths made absolute, names as they are.

    Raises:
        ValueError: not a dataset name or path of a known kind.
    """
    return _source_of(name).resolve(name)


def load_raw(
    name: str,
    image_size: tuple[int, int] | None = None,
    crop: bool = False,
    columns: list[str] | None = None,
    label_column: str | None = None,
    layout: str | None = None,
) -> RawImages:
    """Load a dataset by its ``--data`` string (:data:`SOURCES`): ``digits``,
    ``fashion-mnist``, ``idx:PATH``, ``PATH.npy`` (memory-mapped), ``PATH.npz``,
    ``images:DIR``, or a table ``PATH.csv`` / ``PATH.parquet`` / ``table:PATH``.

    ``image_size`` and ``crop`` apply to ``images:DIR`` only, ``columns`` and
    ``label_column`` to tables only (:func:`pyro_vae.tables.read_table`), ``layout`` to
    arrays only (:func:`pyro_vae.array_source.from_array`).

    Raises:
        ValueError: an unknown name, an option the source does not take, or data its
            loader refuses (named).
        DatasetNotFoundError: a dataset or file that is not there.
    """
    check_layout(layout)
    kind = _source_of(name)
    given = {
        "image_size": image_size,
        "crop": crop or None,
        "columns": columns,
        "label_column": label_column,
        "layout": layout,
    }
    refuse_options_not_taken(name, given)
    check_image_size(image_size, crop)  # after: crop on a table is told it takes none
    options = {**given, "crop": crop}
    return kind.load(name, **{arg: options[arg] for arg in kind.options})


def refuse_options_not_taken(name: str, given: dict[str, Any]) -> None:
    """Refuse each source option in ``given`` ({argument: value}, None or False where not
    given) that the source ``name`` does not take (:data:`SOURCES`): ``image_size`` and
    ``crop`` are an image folder's, ``layout`` an array's, ``columns`` and
    ``label_column`` a table's. A name of no known kind takes none.

    Raises:
        ValueError: naming the argument, its value and the source it applies to."""
    taken = next((kind.options for kind in SOURCES if kind.matches(name)), ())
    for arg, value in given.items():
        if value is not None and value is not False and arg not in taken:
            takes = (
                "an image folder (images:DIR)"
                if arg in ("image_size", "crop")
                else "an array (PATH.npy or PATH.npz)"
                if arg == "layout"
                else ("a table (PATH.csv, PATH.parquet or table:PATH)")
            )
            raise ValueError(f"{arg}: {value!r} applies to {takes} only, not to data {name!r}")


def raw_from_python(data: Any, labels: Any = None, layout: str | None = None) -> RawImages:
    """A numpy array (with optional ``labels``) or a map-style ``torch.utils.data.Dataset``
    (items ``x`` or ``(x, y)``) as :class:`RawImages`, checked (:mod:`pyro_vae.array_source`;
    ``layout``: what a 4-D array holds, :func:`~pyro_vae.array_source.from_array`).

    Raises:
        TypeError: neither an array nor a dataset (a pandas or polars frame is refused:
            its ``[i]`` is a column), or ``labels`` with a dataset.
        ValueError: what :func:`pyro_vae.array_source.check_images` refuses.
    """
    if isinstance(data, np.ndarray):
        arrays = from_array(data, labels, "data", labels_arg="labels", layout=layout)
        return _from_arrays("array", arrays)
    if isinstance(data, torch.Tensor):
        raise TypeError(
            "data: a torch.Tensor; expected a numpy array (data.numpy()) or a "
            "torch.utils.data.Dataset"
        )
    library = type(data).__module__.split(".")[0]
    if library in ("pandas", "polars", "xarray") or isinstance(data, Mapping):
        # a frame looks like a Dataset (len, [i]) but pandas' frame[i] is column i: a
        # square frame with integer column labels was read transposed, silently, and any
        # other raised KeyError: 0 (tester CT); a dict or an xarray Dataset likewise
        # (tester CR)
        kind = f"{library} {type(data).__name__}" if library != "builtins" else "dict"
        raise TypeError(
            f"data: a {kind}, whose [i] is read by key or label (a frame's is column i), "
            "not as row i; expected a table as a CSV or Parquet path (frame.to_csv(path, "
            "index=False): it keeps the column names, takes label_column and standardizes "
            "real-valued columns), or, for image intensities in [0, 1], a numpy array "
            "(frame.to_numpy(), with labels=its label column's values)"
        )
    if hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, str):
        if labels is not None:
            raise TypeError("labels: given with a Dataset, whose items carry their own (x, y)")
        return _from_arrays(f"dataset {type(data).__name__}", from_dataset(data, "data", layout))
    raise TypeError(
        f"data: a {type(data).__name__}; expected a dataset name or path "
        f"({', '.join(DATASET_NAMES)}), a numpy array or a torch.utils.data.Dataset"
    )


def _from_arrays(name: str, a: ArrayImages, provenance: dict | None = None) -> RawImages:
    from_data = a.integer and a.x.dtype.kind in "ui" and a.x.dtype != np.uint8
    return RawImages(
        name, a.x, a.y, None, None, a.max_value, a.integer, a.labelled, provenance,
        max_value_from_data=from_data,
    )  # fmt: skip


def _find_idx(directory: Path, stem: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetNotFoundError(
        f"data: {directory} has no {stem} or {stem}.gz; an IDX dataset directory needs "
        f"{', '.join(_IDX_FILES.values())} (each optionally .gz)"
    )


def _load_idx_directory(name: str, directory: Path) -> RawImages:
    files = {key: _find_idx(directory, stem) for key, stem in _IDX_FILES.items()}
    arrays = {key: read_idx(path) for key, path in files.items()}
    for key in ("train_images", "test_images"):
        arrays[key] = images_channels_first(arrays[key], files[key])
    for key in ("train_images", "test_images"):
        kind = arrays[key].dtype
        if kind.kind == "f" or (kind.kind == "i" and (arrays[key] < 0).any()):
            what = "floating-point" if kind.kind == "f" else "negative"
            raise IDXFormatError(
                f"data: {_find_idx(directory, _IDX_FILES[key])} holds {what} pixels ({kind}); "
                "expected unsigned integer intensities (MNIST's 0..255 unsigned bytes)"
            )
    for key in ("train_labels", "test_labels"):  # a label of 2.7 was read as 2 (tester DZ)
        kind = arrays[key].dtype
        if kind.kind not in "uib":
            raise IDXFormatError(
                f"data: {files[key]} holds {kind} labels; expected integer class labels "
                "(MNIST's unsigned bytes), as arrays and tables are"
            )
    if arrays["train_images"].dtype != arrays["test_images"].dtype:  # scaled apart (tester CE)
        raise IDXFormatError(
            f"data: {files['train_images']} holds {arrays['train_images'].dtype} pixels and "
            f"{files['test_images']} {arrays['test_images'].dtype}; expected one type for "
            "both, whose full intensity the two files then share"
        )
    # full intensity: 255 for bytes; for wider integers the largest value of either file
    # (the training file's alone left test pixels above 1: tester CC's 0..999 training
    # images beside a test file of 4000s were scored as intensities of 4.0), and 1 where
    # every pixel is 0 (which the constant-data check then refuses; tester CE: x / 0)
    max_value = (
        255
        if arrays["train_images"].dtype == np.uint8
        else max(1, *(int(arrays[k].max(initial=0)) for k in ("train_images", "test_images")))
    )
    return _checked(
        RawImages(
            name,
            arrays["train_images"],  # as stored (the notes name its type; 1/8 of int64's memory)
            arrays["train_labels"].astype(np.int64),
            arrays["test_images"],
            arrays["test_labels"].astype(np.int64),
            max_value,
            max_value_from_data=arrays["train_images"].dtype != np.uint8,
            provenance=file_provenance(
                directory,
                list(files.values()),
                arrays["train_images"].shape,
                arrays["train_images"].dtype,
            ),
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
