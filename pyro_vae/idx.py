"""Reader and writer for the IDX format of MNIST-style datasets.

An IDX file is a big-endian header followed by a dense array:

    bytes 0-1   zero
    byte  2     element type (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                0x0D float32, 0x0E float64)
    byte  3     number of dimensions d
    4*d bytes   each dimension's size as a big-endian uint32
    the data    prod(sizes) elements, big-endian, row-major

Reference: LeCun, Cortes & Burges, "The MNIST database of handwritten digits"
(the file-format section). Files may be gzip-compressed; that is detected from the
content (the gzip magic bytes), not the file name.

Images with channels are stored channels last, ``[N, H, W, C]``: the header records sizes
but no layout, and the tools that write MNIST-style files from decoded images (numpy arrays
from Pillow, ``[H, W, C]`` each) write that order. :func:`images_channels_first` turns
them into the ``[N, C, H, W]`` the rest of pyro_vae uses.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

_GZIP_MAGIC = b"\x1f\x8b"

_TYPE_CODES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES_BY_KIND = {(dt.kind, dt.itemsize): code for code, dt in _TYPE_CODES.items()}


class IDXFormatError(ValueError):
    """A file is not a valid IDX file."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a native-endian numpy array.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IDXFormatError: the magic number, element type, or size does not match the format.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise IDXFormatError(f"{path}: corrupt gzip stream ({err})") from err
    if len(raw) < 4:
        raise IDXFormatError(f"{path}: {len(raw)} bytes is too short for an IDX header (4 bytes)")
    if raw[0] != 0 or raw[1] != 0:
        raise IDXFormatError(
            f"{path}: magic number starts {raw[0]:#04x} {raw[1]:#04x}; IDX files start 0x00 0x00"
        )
    type_code, ndim = raw[2], raw[3]
    if type_code not in _TYPE_CODES:
        known = ", ".join(f"{c:#04x}" for c in _TYPE_CODES)
        raise IDXFormatError(f"{path}: element type {type_code:#04x} is not one of {known}")
    if ndim == 0:
        raise IDXFormatError(f"{path}: number of dimensions is 0; expected at least 1")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise IDXFormatError(f"{path}: header declares {ndim} dimensions but the file ends early")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _TYPE_CODES[type_code]
    expected = header_len + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise IDXFormatError(
            f"{path}: header declares shape {shape} of {dtype.name} ({expected} bytes in all) "
            f"but the file holds {len(raw)} bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file; gzip it when ``compress`` (default: name ends in .gz)."""
    path = Path(path)
    array = np.asarray(array)
    key = (array.dtype.kind, array.dtype.itemsize)
    if key not in _CODES_BY_KIND or array.ndim == 0 or array.ndim > 255:
        raise ValueError(
            f"array: dtype {array.dtype} with {array.ndim} dimensions cannot be stored as IDX; "
            "expected uint8, int8, int16, int32, float32 or float64 with 1 to 255 dimensions"
        )
    code = _CODES_BY_KIND[key]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=_TYPE_CODES[code]).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    path.write_bytes(gzip.compress(payload) if compress else payload)


def images_channels_first(array: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """The images of an IDX file in pyro_vae's layout: ``[N, H, W]`` stays as it is (one
    grey channel), ``[N, H, W, 1]`` becomes ``[N, H, W]``, and ``[N, H, W, C]`` becomes
    ``[N, C, H, W]`` (channels last on disk: module docstring).

    Raises:
        IDXFormatError: naming ``path``, for another rank, or for ``[N, C, H, W]`` written
            channels first (a last axis longer than 4 after a second axis of at most 4),
            which would otherwise be read as scrambled pixels.
    """
    if array.ndim == 3:
        return array
    if array.ndim != 4:
        raise IDXFormatError(
            f"{path}: images of shape {array.shape}; expected [N, H, W] or channels last "
            "[N, H, W, C]"
        )
    if array.shape[3] > 4 and array.shape[1] <= 4:
        raise IDXFormatError(
            f"{path}: images of shape {array.shape} look channels first [N, C, H, W]; IDX "
            "images are read channels last [N, H, W, C]: write "
            "`array.transpose(0, 2, 3, 1)` instead"
        )
    if array.shape[3] == 1:
        return array[..., 0]
    return np.ascontiguousarray(array.transpose(0, 3, 1, 2))
