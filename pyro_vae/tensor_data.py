"""Datasets of aligned tensors, for models with global latents fitted by :func:`pyro_vae.fit`.

A :class:`TensorData` holds tensors whose first dimension indexes datapoints (``X`` and
``y`` of a regression, the points of a mixture) and hands them to the model and guide as
``model(*tensors, num_data=N)``. There is no held-out split: with global latents θ the
objective is the ELBO of the whole dataset,

    ELBO(q) = E_q[log p(X, θ) − log q(θ)] ≤ log p(X),

which does not split into per-datapoint terms, so :func:`pyro_vae.fit` reports it as a
total (nats) rather than per datapoint. Minibatches of rows (``batch_size < N``) give the
unbiased subsampled estimate of it when the model's data plate is scaled by N/|B|
(Hoffman et al. 2013). A ``TensorData()`` with no tensors is a model without data (the
Ising model's log-partition bound): each epoch is one step.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from pyro_vae.checks import check_count
from pyro_vae.data_source import WHOLE_DATA, ObservationCheck, ValidationSet, epoch_generator

WHOLE_DATA_DRAWS = 100


class TensorData:
    """Rows of aligned tensors, shuffled into minibatches per epoch.

    A data source for :func:`pyro_vae.fit` (:mod:`pyro_vae.data_source`): the model is
    called as ``model(*tensors)`` and ELBOs are whole-data totals.

    Args:
        *tensors: tensors sharing their first dimension N (the datapoints).
    """

    per_datapoint = False

    def __init__(self, *tensors: torch.Tensor) -> None:
        for i, t in enumerate(tensors):
            if not isinstance(t, torch.Tensor) or t.dim() < 1:
                raise ValueError(
                    f"tensors[{i}]: expected a tensor with a leading data dimension, "
                    f"got {type(t).__name__}"
                )
            if t.shape[0] != tensors[0].shape[0]:
                raise ValueError(
                    f"tensors[{i}]: {t.shape[0]} rows, but tensors[0] has "
                    f"{tensors[0].shape[0]}; expected one row per datapoint in every tensor"
                )
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ValueError(f"tensors[{i}]: holds NaN or infinite entries")
        self.tensors = tuple(tensors)

    @property
    def num_data(self) -> int:
        """N, the number of rows (1 for a dataset without tensors: one step per epoch)."""
        return int(self.tensors[0].shape[0]) if self.tensors else 1

    @property
    def num_train(self) -> int:
        """N: training sees every row (:attr:`num_data`)."""
        return self.num_data

    def batches(self, batch_size: int, epoch: int, seed: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """Shuffled minibatches of rows for one epoch, as tuples of tensors.

        With ``batch_size ≥ N`` the one batch is the tensors themselves, unshuffled.
        Shuffling draws from a generator seeded by ``(seed, epoch)``, so a resumed run sees
        the batches an uninterrupted one would.
        """
        for _, batch in self.indexed_batches(batch_size, epoch, seed):
            yield batch

    def indexed_batches(
        self, batch_size: int, epoch: int, seed: int, drop_last: bool = False
    ) -> Iterator[tuple[torch.Tensor, tuple[torch.Tensor, ...]]]:
        """:meth:`batches` with each batch's rows in 0..N−1: ``(rows, tensors)``; without a
        last partial batch when ``drop_last``."""
        check_count("batch_size", batch_size, 1)
        n = self.num_data
        if not self.tensors or batch_size >= n:
            device = self.tensors[0].device if self.tensors else None
            yield torch.arange(n, device=device), self.tensors
            return
        generator = epoch_generator(seed, epoch)
        order = torch.randperm(n, generator=generator, device=generator.device)
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            if drop_last and len(rows) < batch_size:
                return
            yield rows, tuple(t[rows] for t in self.tensors)

    def steps_per_epoch(self, batch_size: int, drop_last: bool = False) -> int:
        """Minibatches per epoch: 1 for a batch of every row, else ⌈N / batch_size⌉
        (⌊N / batch_size⌋ with ``drop_last``)."""
        if not self.tensors or batch_size >= self.num_data:
            return 1
        return self.num_data // batch_size if drop_last else -(-self.num_data // batch_size)

    def check_training_data(self, check: ObservationCheck) -> None:
        """Nothing beyond the constructor's finiteness check: the tensors are the model's
        arguments, not observations of one likelihood ``check`` could test."""

    def validation_set(self, local_guide: bool, check: ObservationCheck) -> ValidationSet:
        """The whole-data ELBO on every row (common random numbers, 100 draws unless the
        fit says otherwise), for a local guide as for any other: there is no held-out
        split, since with global latents the ELBO does not split into datapoints."""
        return ValidationSet(WHOLE_DATA, self.tensors, whole_data=True, draws=WHOLE_DATA_DRAWS)
