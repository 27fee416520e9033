"""WrappedSource forwards what a wrapper leaves alone to the source it wraps."""

import torch

from pyro_vae.tensor_data import TensorData
from pyro_vae.wrapped_source import WrappedSource


class Doubled(WrappedSource):
    """A wrapper that changes only the batches."""

    def indexed_batches(self, batch_size, epoch, seed, drop_last=False):
        for rows, args in self.data.indexed_batches(batch_size, epoch, seed, drop_last):
            yield rows, tuple(2 * a for a in args)


def test_a_wrapper_changes_its_batches_and_forwards_everything_else():
    source = TensorData(torch.arange(10.0).unsqueeze(1))
    wrapped = Doubled(source)
    assert wrapped.num_train == source.num_train == 10
    assert wrapped.per_datapoint == source.per_datapoint
    assert wrapped.steps_per_epoch(4) == source.steps_per_epoch(4) == 3
    assert wrapped.steps_per_epoch(4, drop_last=True) == 2
    assert wrapped.num_data == source.num_data  # any other attribute: the source's own
    ours = list(wrapped.indexed_batches(4, 0, 0))
    theirs = list(source.indexed_batches(4, 0, 0))
    for (rows, args), (rows_0, args_0) in zip(ours, theirs, strict=True):
        assert torch.equal(rows, rows_0) and torch.equal(args[0], 2 * args_0[0])
