"""The per-datapoint plate as a model or guide declares it: :func:`data_plate`.

A ``pyro.plate`` named ``"data"`` at ``dim=-1`` over the rows of ``x``, scaled by
``num_data / len(x)`` when ``x`` is a minibatch. It sits below the guides and models that
declare it; finding the plate in a trace is :mod:`pyro_vae.plates`' job.
"""

from __future__ import annotations

import pyro
import torch

DATA_PLATE = "data"
DATA_DIM = -1

#: The active :class:`pyro_vae.minibatch.DataPlateSubsample` handlers, innermost last:
#: each gives a data plate its full size N (``num_data``) and the batch's rows. Held here,
#: below the guides, so a local guide can read which of its N rows it is asked for.
ACTIVE_SUBSAMPLES: list = []


def active_num_data(plate: str = DATA_PLATE) -> int | None:
    """N, the full size the innermost active handler gives the plate ``plate``, or None
    outside one (a plain call)."""
    for handler in reversed(ACTIVE_SUBSAMPLES):
        if handler.plate == plate:
            return int(handler.num_data)
    return None


def data_plate(x: torch.Tensor, num_data: int | None = None) -> pyro.plate:
    """A ``pyro.plate`` over the rows of ``x``, scaled up to ``num_data`` rows in all."""
    batch = x.shape[0]
    if num_data is None:
        num_data = batch
    elif num_data < batch:
        raise ValueError(
            f"num_data: {num_data} is smaller than the minibatch of {batch} rows; expected the "
            "size of the whole dataset the minibatch was drawn from"
        )
    # device: Pyro's plate reads its own from a tensor made on the default device
    # (tester CN: under torch.set_default_device("meta") the fit failed)
    rows = torch.arange(batch, device=x.device)
    return pyro.plate(DATA_PLATE, size=num_data, subsample=rows, dim=DATA_DIM, device=x.device)
