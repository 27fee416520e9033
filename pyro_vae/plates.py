"""The data plate: the one convention models and guides share with the evaluator.

Every model and guide in this package draws its per-datapoint sites inside
``data_plate(x, num_data)``: a ``pyro.plate`` named ``"data"`` at ``dim=-1`` over the rows
of ``x``. When ``x`` is a minibatch of a dataset of ``num_data`` points, the plate scales
each log-density by ``num_data / len(x)``, so the minibatch ELBO is an unbiased estimate
of the full-data ELBO (Hoffman et al. 2013, stochastic variational inference).
The evaluator finds per-datapoint terms by this plate's name.
"""

from __future__ import annotations

import pyro
import torch

DATA_PLATE = "data"
DATA_DIM = -1


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
    return pyro.plate(DATA_PLATE, size=num_data, subsample=torch.arange(batch), dim=DATA_DIM)
