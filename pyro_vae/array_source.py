"""Arrays as datasets: ``.npy`` files (memory-mapped), ``.npz`` files, and numpy arrays or
``torch.utils.data.Dataset`` objects handed over from Python.

What an array holds (rows first, channels before height and width as in torch):

- ``[N, H, W]`` or ``[N, C, H, W]`` images, or ``[N, D]`` vectors;
- either integer pixels (``uint8`` 0..255, or any unsigned/signed integer type with no
  negative values, whose largest value is then taken as full intensity, as for IDX files;
  ``bool`` as 0/1), or floating-point intensities in [0, 1];
- optional integer labels ``[N]``: beside ``PATH.npy`` in ``PATH.labels.npy``; in an
  ``.npz`` under the key ``y`` (the images under ``x``); without them every label is 0.

A ``.npy`` file is opened with ``np.load(path, mmap_mode="r")``: nothing is read until a
row is used, so an array larger than memory trains (:class:`pyro_vae.mapped_rows.
MappedRows`). An ``.npz`` file is a zip archive whose members numpy cannot map, so it is
read into memory whole: save large data as ``.npy``.

Every array is checked before any training, streaming a memory map in chunks: its rank,
dtype, emptiness, NaN or infinite values, and values outside what the likelihoods need
(negative integers, floats outside [0, 1]); the error names the argument, the value and
what was expected.
"""

from __future__ import annotations

import codecs
import warnings
from dataclasses import dataclass
from pathlib import Path
from shlex import quote
from typing import Any

import numpy as np

ARRAY_SUFFIXES = (".npy", ".npz")


class UnreadArraysWarning(UserWarning):
    """An ``.npz`` holds arrays other than ``x`` and ``y``, which are not read."""


LABELS_SUFFIX = ".labels.npy"
SHAPES = "[N, D], [N, H, W] or [N, C, H, W]"
_CHANNELS = (1, 3, 4)  # grey, RGB, RGBA: the channel counts a layout is told by
#: What ``layout`` states of a 4-D array; ``None`` (the default) guesses from its shape.
LAYOUTS = ("channels-first", "channels-last")
_CHECK_BYTES = 64 * 2**20  # bytes of stored rows per chunk of the up-front scan


@dataclass(frozen=True)
class ArrayImages:
    """A checked array of images and its labels.

    Attributes:
        x: the stored rows ``[N, ...]`` (a ``np.memmap`` for a ``.npy`` file).
        y: ``[N]`` integer labels (zeros when none were given); ``labelled``: whether given.
        max_value: the stored value of full intensity (255 for ``uint8``; 1 for floats).
        integer: whether pixels are integers (else float intensities in [0, 1]).
        files: the files read (for provenance); empty for an array from Python.
    """

    x: np.ndarray
    y: np.ndarray
    labelled: bool
    max_value: int
    integer: bool
    files: tuple[Path, ...] = ()


def is_array_path(name: str) -> bool:
    """Whether ``--data`` ``name`` names an array file (``.npy`` or ``.npz``)."""
    return isinstance(name, str) and name.lower().endswith(ARRAY_SUFFIXES)


def labels_path(path: Path) -> Path:
    """Where the labels of ``PATH.npy`` are looked for: ``PATH.labels.npy``."""
    return path.with_name(path.name[: -len(".npy")] + LABELS_SUFFIX)


def read_array_file(name: str, layout: str | None = None) -> ArrayImages:
    """Open ``name`` (a ``.npy`` file memory-mapped, an ``.npz`` file in memory) and check it;
    ``layout``: what a 4-D array holds (:func:`from_array`).

    Raises:
        FileNotFoundError: ``name`` is not a file.
        ValueError: not a numpy file, or what :func:`check_images` refuses.
    """
    path = Path(name).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"data: {name!r} is not a file; expected a .npy or .npz array ({SHAPES})"
        )
    if path.suffix.lower() == ".npz":
        return _read_npz(path, layout)
    x = _one_array(path, mmap_mode="r")
    y, files = None, (path,)
    if labels_path(path).is_file():
        y = _one_array(labels_path(path))
        files = (path, labels_path(path))
    labels = f"labels {labels_path(path)}"
    return from_array(x, y, f"data {path}", files, labels_arg=labels, layout=layout)


def _unreadable_as_value_error(path: Path, read: Any) -> Any:
    """``read()``, with numpy's errors on a file it cannot read (not numpy's format, a
    pickled object, a truncated file) as one ``ValueError`` naming the file; errors about
    what a readable file holds are raised by the checks after, in their own words."""
    try:
        return read()
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"data: {path} is not a readable numpy file ({_why(path, err)})") from err


def _why(path: Path, err: Exception) -> str:
    """numpy's reason, or what the file is where it is no numpy file at all: numpy tries
    anything else as a pickle and says so ("contains pickled (object) data"), of a CSV
    named ``.npy`` too (tester CC)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return str(err)
    if not head:  # tester FM: a 0-byte file was said to hold text
        return "it is empty (0 bytes); expected an array saved with np.save"
    if head.startswith(b"\x93NUMPY"):
        if "object" in str(err).lower():  # tester FM: numpy's reason alone, no way out
            return (
                f"{str(err).rstrip('.')}; expected an array of numbers: save it with a "
                "numeric dtype, e.g. "
                "np.save(path, x.astype(np.float32))"
            )
        return str(err)  # numpy's own format, damaged: numpy's words say how
    if head.startswith(b"PK\x03\x04"):
        return str(err)
    try:  # incrementally: a character cut at the 4096th byte is no decoding error
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        text = b"\x00" not in head
    except UnicodeDecodeError:
        text = False
    what = (
        "it starts as neither a .npy nor an .npz file does; expected an array saved with "
        "np.save, or arrays with np.savez"
    )
    table = quote(f"table:{path}")  # a shell word (tester ER: a path with a space split)
    return what + (f"; it holds text: a table? give it as `--data {table}`" if text else "")


def _one_array(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    """The array a ``.npy`` file holds (memory-mapped with ``mmap_mode="r"``).

    Raises:
        ValueError: naming the file, where numpy cannot read it or it is an ``.npz``
            archive under another name (a traceback, tester CC)."""
    read = _unreadable_as_value_error(
        path, lambda: np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    )
    if not isinstance(read, np.ndarray):
        read.close()
        raise ValueError(
            f"data: {path} is an .npz archive (of {sorted(read.files)}) named as a .npy "
            "file; expected one array: rename it to .npz, or save the array with np.save"
        )
    return read


def _read_npz(path: Path, layout: str | None = None) -> ArrayImages:
    """An ``.npz``: numpy cannot memory-map zip members, so ``x`` and ``y`` are read whole."""
    archive = _unreadable_as_value_error(path, lambda: np.load(path, allow_pickle=False))
    if isinstance(archive, np.ndarray):  # a .npy under another name (a traceback, tester CC)
        raise ValueError(
            f"data: {path} is one .npy array {archive.shape} named as an .npz archive; "
            "expected a zip of arrays 'x' (and 'y'): rename it to .npy, or save it with "
            "np.savez(path, x=...)"
        )
    with archive:
        if "x" not in archive.files:
            raise ValueError(
                f"data: {path} holds the arrays {sorted(archive.files)}; expected the images "
                "under 'x' (and optionally labels under 'y'). An .npz is read into memory "
                "whole (numpy cannot memory-map its members); save large data as .npy"
            )
        x = _unreadable_as_value_error(path, lambda: archive["x"])
        y = _unreadable_as_value_error(path, lambda: archive.get("y"))
        unread = sorted(set(archive.files) - {"x", "y"})
    if unread:  # tester DZ: x_test and y_test, or labels under "labels", dropped unsaid
        read = "'x' and 'y'" if y is not None else "'x'"
        warnings.warn(
            f"data: {path} holds {unread} beside {read}, "
            "which are not read: the test and validation rows are drawn from 'x', and "
            "labels are read from 'y' alone",
            UnreadArraysWarning,
            stacklevel=3,
        )
    labels = f"data {path}['y']"
    return from_array(x, y, f"data {path}['x']", (path,), labels_arg=labels, layout=layout)


def from_array(
    x: Any,
    y: Any = None,
    arg: str = "data",
    files: tuple[Path, ...] = (),
    labels_arg: str = "labels",
    layout: str | None = None,
) -> ArrayImages:
    """Check a numpy array of images (and labels) given from Python or read from a file.
    ``layout`` (:data:`LAYOUTS`) states what a 4-D array holds: ``"channels-last"``
    ``[N, H, W, C]`` is read as ``[N, C, H, W]`` (a view: a memory map stays one);
    ``None`` reads ``[N, C, H, W]`` and refuses a shape that looks channels last or could
    be either (:func:`check_images`).

    Raises:
        TypeError: ``x`` is not a numpy array.
        ValueError: what :func:`check_images` and :func:`check_labels` refuse; a
            ``layout`` not in :data:`LAYOUTS` or given for an array that is not 4-D.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{arg}: a {type(x).__name__}; expected a numpy array ({SHAPES})")
    check_layout(layout, x, arg)
    max_value, integer = check_images(x, arg, guess_layout=layout is None)
    if layout == "channels-last":
        x = np.moveaxis(x, -1, 1)
    labelled = y is not None
    y = (
        np.zeros(x.shape[0], dtype=np.int64)
        if y is None
        else check_labels(y, x.shape[0], labels_arg)
    )
    return ArrayImages(x, y, labelled, max_value, integer, tuple(files))


def from_dataset(dataset: Any, arg: str = "data", layout: str | None = None) -> ArrayImages:
    """The items of a map-style ``torch.utils.data.Dataset`` (each ``x`` or ``(x, y)``)
    stacked into arrays in memory and checked as :func:`from_array` checks them (with
    ``layout``). A Python list is such a dataset too, so its refusals say how to give rows
    instead.

    Raises:
        ValueError: no items, items of different shapes or kinds (the first named), or
            what :func:`from_array` refuses.
    """
    try:
        return _stacked_items(dataset, arg, layout)
    except ValueError as err:
        if not isinstance(dataset, list | tuple):
            raise
        # tester CJ: rows [[0.1, 0.2]] * 50 were read as (x, y) pairs of scalars, and
        # refused as "shape (50,) has rank 1"
        raise ValueError(
            f"{err} (a {type(dataset).__name__} is read as a Dataset of x or (x, y) items; "
            "for rows of values, pass an array: np.asarray(rows, dtype=np.float32))"
        ) from err


def _stacked_items(dataset: Any, arg: str, layout: str | None) -> ArrayImages:
    """:func:`from_dataset`'s work: the items stacked and checked."""
    count = len(dataset)
    if count == 0:
        raise ValueError(f"{arg}: the dataset has 0 items; expected at least 1")
    xs, ys = [], []
    for i in range(count):
        item = _x_or_pair(dataset[i], i, arg)
        pair = isinstance(item, tuple)
        if i and pair != (ys != []):
            raise ValueError(f"{arg}: item {i} is {'(x, y)' if pair else 'x'}, unlike item 0")
        x = np.asarray(item[0] if pair else item)
        if xs and x.shape != xs[0].shape:
            raise ValueError(
                f"{arg}: item {i} has shape {x.shape} but item 0 has {xs[0].shape}; expected "
                "items of one shape"
            )
        xs.append(x)
        if pair:
            ys.append(np.asarray(item[1]))
    x = np.stack(xs)
    y = np.stack(ys) if ys else None
    return from_array(x, y, arg, labels_arg=f"{arg} labels", layout=layout)


def _x_or_pair(item: Any, i: int, arg: str) -> Any:
    """A dataset's item as ``x`` or an ``(x, y)`` tuple: a 1-tuple ``(x,)`` is ``x``, as
    ``TensorDataset(x)`` gives it (tester EK: refused as "1 parts").

    Raises:
        ValueError: an item of more than two parts, or a mapping (naming its keys)."""
    if isinstance(item, dict):  # a HuggingFace-style {"x": ..., "y": ...} item
        raise ValueError(
            f"{arg}: item {i} is a dict with the keys {sorted(map(str, item))}; expected x "
            "or (x, y) (a Dataset whose __getitem__ returns (item['x'], item['y']), say)"
        )
    if not isinstance(item, tuple | list):
        return item
    if len(item) == 1:
        return item[0]
    if len(item) != 2:
        raise ValueError(f"{arg}: item {i} has {len(item)} parts; expected x, (x,) or (x, y)")
    return tuple(item)


def check_layout(layout: Any, x: np.ndarray | None = None, arg: str = "data") -> None:
    """Refuse a ``layout`` not in :data:`LAYOUTS` (``None``: guess), or one given for an
    array ``x`` that is not 4-D (only ``[N, C, H, W]`` and ``[N, H, W, C]`` differ by it).

    Raises:
        ValueError: naming ``layout``, the value and what was expected."""
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout: {layout!r} is not one of {', '.join(LAYOUTS)} (or None)")
    if layout is not None and x is not None and x.ndim != 4:
        raise ValueError(
            f"layout: {layout!r} given for {arg} of shape {x.shape}; it applies to 4-D "
            "arrays of images only ([N, C, H, W] or [N, H, W, C])"
        )


def check_images(x: np.ndarray, arg: str, guess_layout: bool = True) -> tuple[int, bool]:
    """Refuse an array that is not images or vectors the likelihoods can model; return its
    full-intensity value and whether its pixels are integers. A memory map is scanned in
    chunks of about 64 MiB, so the check reads the file once without loading it.
    ``guess_layout``: whether a 4-D array's layout is guessed from its shape (the caller
    was not told it): one that looks channels last, or could be either, is refused.

    Raises:
        ValueError: naming ``arg``, what was found and what was expected.
    """
    kind = x.dtype.kind
    if kind not in "uifb":
        raise ValueError(
            f"{arg}: dtype {x.dtype}; expected integer pixels (uint8 0..255) or float "
            "intensities in [0, 1]"
        )
    if not 2 <= x.ndim <= 4:
        raise ValueError(f"{arg}: shape {x.shape} has rank {x.ndim}; expected {SHAPES}")
    if x.shape[0] == 0:
        raise ValueError(f"{arg}: shape {x.shape} is empty; expected at least one row of data")
    if 0 in x.shape:  # tester CJ: 100 rows of no values were said to be no rows
        raise ValueError(
            f"{arg}: shape {x.shape} has {x.shape[0]} rows of no values (a dimension of size "
            "0); expected at least one value per row"
        )
    if guess_layout and x.ndim == 4:
        _guess_layout(x, arg)
    rows = max(1, _CHECK_BYTES // max(1, x[0].nbytes))
    largest = 0
    for start in range(0, x.shape[0], rows):
        chunk = np.asarray(x[start : start + rows])
        where = f"{arg} (rows {start}..{start + len(chunk) - 1})"
        if kind == "f":
            if not np.isfinite(chunk).all():
                bad = start + int(np.argmin(np.isfinite(chunk).reshape(len(chunk), -1).all(1)))
                raise ValueError(f"{where}: row {bad} has NaN or infinite values; expected finite")
            low, high = float(chunk.min()), float(chunk.max())
            if low < 0 or high > 1:
                raise ValueError(
                    f"{where}: float values in [{low:g}, {high:g}]; expected intensities in "
                    "[0, 1] (scale the data, or store integer pixels 0..255 as uint8; "
                    "real-valued features go in a table, a CSV or Parquet file, which "
                    "--likelihood normal standardizes)"
                )
        elif kind in "ui":
            if kind == "i" and int(chunk.min()) < 0:
                raise ValueError(
                    f"{where}: negative pixel value {int(chunk.min())}; expected integer "
                    "intensities from 0"
                )
            largest = max(largest, int(chunk.max()))
    if kind == "f":
        return 1, False
    if kind == "b":
        return 1, True
    return (255 if x.dtype == np.uint8 else max(1, largest)), True


def _guess_layout(x: np.ndarray, arg: str) -> None:
    """Refuse a 4-D array whose shape looks channels last, or could be either layout:
    a channel count last (tester CC: not where the last two are a square image's,
    [N, 2, 4, 4]), and none first, or one first too (tester EX: [N, 4, 20, 3] was read
    as four channels of 20x3, silently), or where all three are one channel count
    ([N, 4, 4, 4]: four channels of 4x4 either way round, read channels first silently)."""
    _, first, middle, last = x.shape
    cube = first == middle == last and last > 1  # the two layouts differ by a transpose
    if last not in _CHANNELS or (middle == last and not cube):
        return
    if first not in _CHANNELS:
        why = "looks channels last, [N, H, W, C]"
    elif cube:  # (tester FH: "3 channels of 3x3 or 3 of 3x3")
        why = f"is {last} channels of {last}x{last} images either way round, channels first or last"
    else:
        why = f"could be {first} channels of {middle}x{last} or {last} of {first}x{middle}"
    raise ValueError(
        f"{arg}: shape {x.shape} {why}; refused rather than read as images of the wrong "
        "shape: say which with --layout channels-first or --layout channels-last "
        "(layout= in load_data)"
    )


def check_labels(y: Any, count: int, arg: str) -> np.ndarray:
    """``y`` as ``[count]`` int64 labels.

    Raises:
        ValueError: not integers, or not one per row.
    """
    y = np.asarray(y)
    if y.shape != (count,):
        raise ValueError(f"{arg}: shape {y.shape}; expected ({count},), one label per row")
    if y.dtype.kind not in "uib":
        raise ValueError(f"{arg}: dtype {y.dtype}; expected integer class labels")
    return y.astype(np.int64)
