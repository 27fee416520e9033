"""What the fit loop needs from a dataset, whatever kind it is: one interface.

A data source supplies

- ``num_train``: N, the rows training sees, and ``per_datapoint``: whether ELBOs on it are
  reported per datapoint (nats per image) or as one whole-data total;
- ``steps_per_epoch(batch_size, drop_last)`` and ``indexed_batches(batch_size, epoch, seed,
  drop_last)``: one epoch of shuffled minibatches as ``(rows, args)``, ``rows`` the
  batch's indices in 0..N−1 (``[B]``) and ``args`` the model's positional arguments, drawn
  from a generator seeded by ``(seed, epoch)`` (:func:`epoch_generator`) so a resumed run
  sees exactly the batches an uninterrupted one would;
- ``check_training_data(check)``: refuses bad rows before the first step, handing the
  observations to ``check`` (the likelihood's test, :func:`pyro_vae.likelihoods.
  check_observations`) in chunks;
- ``validation_set(local_guide, check)``: its validation protocol, a
  :class:`ValidationSet`;
- optionally ``keywords``: counts of the whole training set that a model or guide naming
  them is given with each batch (a labelled source's ``num_labelled``,
  :class:`pyro_vae.minibatch.Minibatched`); :class:`TrainingBatches` reads them, and
  :class:`ShardedSource` passes its source's on, so every rank is given the whole set's.

:class:`pyro_vae.data.DataSplits` (images, validated per datapoint on held-out rows) and
:class:`pyro_vae.tensor_data.TensorData` (tensors for models with global latents,
validated on the whole-data ELBO) implement it. :class:`TrainingBatches` binds a source to
one batch size, seed and ``drop_last`` for a fit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from pyro_vae.mapped_rows import MappedRows

ObservationCheck = Callable[[torch.Tensor, str], None]
"""``check(x, what)`` raises ``ValueError`` naming ``what`` unless the model can observe ``x``."""

HELD_OUT = "held-out ELBO per datapoint (nats)"
TRAINING_SET = (
    "training-set ELBO per datapoint (nats): the guide has free per-datapoint parameters, "
    "so it has no posterior for held-out rows"
)
WHOLE_DATA = "whole-data ELBO (total nats)"


@dataclass(frozen=True)
class ValidationSet:
    """What validation measures on a data source.

    Attributes:
        kind: what the number is, for metrics.json (:data:`HELD_OUT`, :data:`TRAINING_SET`,
            :data:`WHOLE_DATA`).
        args: the model arguments to validate on, rows first.
        whole_data: ``True``: the whole-data ELBO, a total in nats, estimated on common
            random numbers (it does not split into datapoints); ``False``: the mean of the
            per-datapoint ELBOs of the rows of ``args[0]``.
        draws: particles per datapoint (per-datapoint) or draws of the whole-data ELBO
            when the fit does not say: 1 per datapoint, since the mean over many
            datapoints is already steady; 100 for a whole-data ELBO, which one draw of a
            global latent moves by nats.
    """

    kind: str
    args: tuple[torch.Tensor, ...]
    whole_data: bool
    draws: int


@runtime_checkable
class DataSource(Protocol):
    """The interface of the module docstring."""

    per_datapoint: bool

    @property
    def num_train(self) -> int: ...

    def steps_per_epoch(self, batch_size: int, drop_last: bool = False) -> int: ...

    def indexed_batches(
        self, batch_size: int, epoch: int, seed: int, drop_last: bool = False
    ) -> Iterator[tuple[torch.Tensor, tuple[torch.Tensor, ...]]]: ...

    def check_training_data(self, check: ObservationCheck) -> None: ...

    def validation_set(
        self, local_guide: bool, check: ObservationCheck
    ) -> ValidationSet | None: ...


def source_keywords(data) -> dict:
    """A data source's ``keywords`` (module docstring), ``{}`` where it has none."""
    return dict(getattr(data, "keywords", None) or {})


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator an epoch's shuffling (and dynamic binarization) draws from: seeded by
    ``(seed, epoch)`` alone, so any epoch's batches can be drawn again without the ones
    before it."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))


class TrainingBatches:
    """A data source's minibatches for one fit: its count, the first batch (what set-up
    and the estimator's checks run on) and each epoch's batches.

    Attributes:
        data: the source; ``num_data``: N; ``steps_per_epoch``: batches per epoch.
        keywords: the source's ``keywords`` (module docstring), ``{}`` where it has none.
        divisor: what turns a loss into the reported ELBO (N per datapoint, else 1).
        first_rows, first_batch: epoch 0's first ``(rows, args)``.

    Raises:
        TypeError: ``data`` is not a :class:`DataSource`.
        ValueError: from the source, e.g. no training rows, or every batch dropped.
    """

    def __init__(self, data, batch_size: int, seed: int, drop_last: bool = False) -> None:
        if not isinstance(data, DataSource):
            raise TypeError(
                f"data: expected pyro_vae.DataSplits or pyro_vae.TensorData (or another "
                f"pyro_vae.data_source.DataSource), got {type(data).__name__}"
            )
        self.data, self.batch_size, self.seed, self.drop_last = data, batch_size, seed, drop_last
        self.num_data = data.num_train
        self.keywords = source_keywords(data)
        self.steps_per_epoch = data.steps_per_epoch(batch_size, drop_last)
        self.divisor = float(self.num_data) if data.per_datapoint else 1.0
        self.first_rows, self.first_batch = next(iter(self.of_epoch(0)))

    def of_epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, tuple[torch.Tensor, ...]]]:
        """Epoch ``epoch``'s batches, ``(rows, args)``."""
        return self.data.indexed_batches(self.batch_size, epoch, self.seed, self.drop_last)


def shard_of(count: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s contiguous part of ``count`` rows split ``world`` ways, as
    ``torch.tensor_split`` splits them: the first ``count % world`` parts have one row more."""
    size, extra = divmod(count, world)
    start = rank * size + min(rank, extra)
    return slice(start, start + size + (rank < extra))


class ShardedSource:
    """One rank's view of a data source under data-parallel training: every rank draws
    the same seeded epoch of global batches (:func:`epoch_generator`) and keeps its
    contiguous part of each (:func:`shard_of`); held-out validation rows are split alike.

    A global batch of B rows gives rank r b_r ≈ B / world of them; the data plate then
    scales rank r's loss by N / b_r, which :mod:`pyro_vae.distributed` undoes when it
    reduces the ranks' gradients. ``num_train``, ``per_datapoint`` and the number of
    steps are the wrapped source's, so every rank takes the same steps. Validation on the
    training set (a guide with free per-datapoint parameters, whose rows must stay
    aligned) and whole-data validation are not split: every rank computes all of it.

    Attributes:
        validation_rows: the validation rows this rank computes (after
            :meth:`validation_set`), the weight of its validation ELBO in the mean over
            ranks; ``None`` for a validation that is not split.

    Raises:
        ValueError: ``rank`` outside 0..world−1.
    """

    def __init__(self, data: DataSource, rank: int, world: int) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank: {rank} is not in 0..{world - 1}; expected a rank of the group")
        self.data, self.rank, self.world = data, rank, world
        self.per_datapoint = data.per_datapoint
        self.validation_rows: int | None = None

    @property
    def num_train(self) -> int:
        return self.data.num_train

    @property
    def keywords(self) -> dict:
        """The wrapped source's whole-set counts (module docstring), the same on every
        rank: a rank's part of the batch is scaled to the whole set's, not to its own
        (M2's classifier term fell back to its part's count of labels without them)."""
        return source_keywords(self.data)

    def steps_per_epoch(self, batch_size: int, drop_last: bool = False) -> int:
        return self.data.steps_per_epoch(batch_size, drop_last)

    def indexed_batches(
        self, batch_size: int, epoch: int, seed: int, drop_last: bool = False
    ) -> Iterator[tuple[torch.Tensor, tuple[torch.Tensor, ...]]]:
        """This rank's part of each global batch: ``(rows, args)`` sliced alike, arguments
        whose first dim is not the batch's rows passed whole."""
        for rows, args in self.data.indexed_batches(batch_size, epoch, seed, drop_last):
            part = shard_of(len(rows), self.rank, self.world)
            yield rows[part], tuple(_rows_of(a, len(rows), part) for a in args)

    def check_training_data(self, check: ObservationCheck) -> None:
        self.data.check_training_data(check)

    def validation_set(self, local_guide: bool, check: ObservationCheck) -> ValidationSet | None:
        plan = self.data.validation_set(local_guide, check)
        if plan is None or plan.whole_data or plan.kind != HELD_OUT:
            return plan
        n = plan.args[0].shape[0]
        if n < self.world:
            raise ValueError(
                f"validation: {n} held-out rows cannot be split over {self.world} ranks; "
                f"expected at least one row per rank: a larger val_fraction (--val-fraction), "
                "or 0 for no validation set"
            )  # tester CS
        part = shard_of(n, self.rank, self.world)
        self.validation_rows = part.stop - part.start
        return ValidationSet(
            plan.kind,
            tuple(_rows_of(a, n, part) for a in plan.args),
            whole_data=False,
            draws=plan.draws,
        )


def _rows_of(arg, rows: int, part: slice):
    """``arg``'s rows ``part`` when its first dim is the rows; memory-mapped rows stay an
    index set into the map (:meth:`~pyro_vae.mapped_rows.MappedRows.subset`), not a copy."""
    if isinstance(arg, MappedRows) and arg.shape[0] == rows:
        return arg.subset(part)
    if isinstance(arg, torch.Tensor) and arg.dim() and arg.shape[0] == rows:
        return arg[part]
    return arg
