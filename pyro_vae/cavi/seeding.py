"""torch's global CPU random state, seeded for one block and restored after, for ``AutoCAVI``.

:func:`torch.random.fork_rng` with :func:`torch.manual_seed` does the same, and also forks
and seeds every CUDA device's state; on a machine without CUDA the seeding is queued for a
lazy CUDA initialization with the caller's stack trace recorded, 0.2 ms a call, on fits that
take 1 to 20 ms. ``AutoCAVI`` runs on the CPU only (it refuses tensors elsewhere), so its
model runs draw from the CPU generator alone.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def cpu_rng(seed: int | None = None):
    """Inside the block torch's default CPU generator is seeded by ``seed`` (None: left as
    it is); its state before the block is restored after, whatever the block drew."""
    state = torch.get_rng_state()
    try:
        if seed is not None:
            torch.default_generator.manual_seed(seed)
        yield
    finally:
        torch.set_rng_state(state)
