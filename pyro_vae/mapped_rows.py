"""Rows of an array on disk, read only when asked for: a split of a memory-mapped ``.npy``.

A :class:`MappedRows` is an index set into a (memory-mapped) numpy array and the function
that turns stored rows into observations. It holds no copy of the data: a minibatch, a
validation chunk or a slice is gathered from the map when it is asked for and turned
into a float32 tensor then, so training on an array larger than memory keeps only the
rows in use (and the pages the kernel caches, which it may drop) resident.

It offers what the fit loop and the evaluators use of a ``[N, D]`` tensor of
observations: ``shape``, ``len``, ``dim()``, ``device``, ``dtype``, ``index_select(0,
rows)`` and slicing with a ``slice`` or an index array (each returns a tensor), plus
:meth:`subset` (a lazy sub-index set) and :meth:`chunks` (the rows in order, a chunk at a
time). A gathered row equals, bit for bit, the same row of the tensor the whole split
would give in memory: the transform is elementwise per row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

Observe = Callable[[np.ndarray], torch.Tensor]
"""``observe(stored)`` turns stored rows ``[n, ...]`` into observations ``[n, D]``."""

CHUNK_ROWS = 10_000
"""Rows per chunk when a whole split is streamed (checks, evaluation)."""


class MappedRows:
    """The rows ``index`` of ``array`` as observations, gathered on demand.

    Args:
        array: the stored data ``[M, ...]``, typically ``np.load(path, mmap_mode="r")``.
        index: which of its rows, in order (``[N]`` integers in 0..M−1).
        observe: the stored-to-observation transform (see :data:`Observe`).
        width: D, the length of one observation.
    """

    dtype = torch.float32

    def __init__(
        self,
        array: np.ndarray,
        index: np.ndarray,
        observe: Observe,
        width: int,
        device: torch.device | None = None,
    ):
        self.array = array
        self.index = np.asarray(index, dtype=np.int64)
        self.observe = observe
        self.width = int(width)
        self.device = torch.device("cpu") if device is None else device

    def to_device(self, device: torch.device) -> MappedRows:
        """The same rows, each gather put on ``device`` (the map stays where it is):
        what :func:`pyro_vae.devices.to_device` does with them."""
        return MappedRows(self.array, self.index, self.observe, self.width, device)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.index), self.width))

    def __len__(self) -> int:
        return len(self.index)

    def dim(self) -> int:
        return 2

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def __repr__(self) -> str:
        kind = type(self.array).__name__
        return f"MappedRows({len(self)} rows of a {kind} {self.array.shape} {self.array.dtype})"

    def gather(self, rows) -> torch.Tensor:
        """Observations of rows ``rows`` (positions in this set, any order), ``[n, D]``.

        The rows are read from the array in ascending file order (sequential reads on a
        map) and put back in the order asked for."""
        positions = self.index[np.asarray(rows, dtype=np.int64).reshape(-1)]
        order = np.argsort(positions, kind="stable")
        stored = np.empty((len(positions), *self.array.shape[1:]), dtype=self.array.dtype)
        stored[order] = self.array[positions[order]]
        x = self.observe(stored)
        return x if self.device.type == "cpu" else x.to(self.device)

    def index_select(self, dim: int, index: torch.Tensor) -> torch.Tensor:
        if dim != 0:
            raise ValueError(f"dim: {dim}; MappedRows selects rows (dim 0) only")
        return self.gather(index.cpu().numpy())

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, slice):
            return self.gather(np.arange(len(self))[key])
        if isinstance(key, int | np.integer):
            return self.gather([np.arange(len(self))[key]])[0]
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        return self.gather(np.arange(len(self))[np.asarray(key)])

    def subset(self, key) -> MappedRows:
        """These rows' ``key`` (a slice or index array) as a :class:`MappedRows`: no read."""
        return MappedRows(self.array, self.index[key], self.observe, self.width, self.device)

    def chunks(self, size: int = CHUNK_ROWS) -> Iterator[torch.Tensor]:
        """The observations in order, ``size`` rows at a time."""
        for start in range(0, len(self), size):
            yield self[start : start + size]

    def to_tensor(self) -> torch.Tensor:
        """All the rows in memory, ``[N, D]`` (what a small split may afford)."""
        if not len(self):
            return torch.empty(0, self.width, dtype=self.dtype)
        return torch.cat(list(self.chunks()))


def in_memory(x, limit: int | None = None) -> torch.Tensor:
    """``x`` (a tensor or :class:`MappedRows`) as a tensor: its first ``limit`` rows
    (``None``: all) of a :class:`MappedRows`; a tensor is returned as it is."""
    if isinstance(x, MappedRows):
        return x[:limit]
    return x
