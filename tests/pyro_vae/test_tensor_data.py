import pytest
import torch

from pyro_vae.tensor_data import TensorData


def test_batches_cover_every_row_once_in_a_reproducible_order():
    X, y = torch.arange(10.0).reshape(10, 1), torch.arange(10)
    data = TensorData(X, y)
    first = list(data.batches(4, epoch=3, seed=1))
    assert [b[0].shape[0] for b in first] == [4, 4, 2]
    rows = torch.cat([b[1] for b in first])
    assert sorted(rows.tolist()) == list(range(10))
    assert all(torch.equal(b[0][:, 0].long(), b[1]) for b in first)  # rows stay aligned
    again = list(data.batches(4, epoch=3, seed=1))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    other = torch.cat([b[1] for b in data.batches(4, epoch=4, seed=1)])
    assert not torch.equal(rows, other)
    assert data.steps_per_epoch(4) == 3


def test_a_full_batch_is_the_tensors_themselves_and_no_tensors_is_one_step():
    X = torch.randn(5, 2)
    (batch,) = list(TensorData(X).batches(100, 0, 0))
    assert batch[0] is X
    assert list(TensorData().batches(8, 0, 0)) == [()]
    assert TensorData().num_data == 1 and TensorData().steps_per_epoch(8) == 1


def test_bad_tensors_are_named():
    with pytest.raises(ValueError, match="tensors\\[1\\]: 3 rows, but tensors\\[0\\] has 4"):
        TensorData(torch.zeros(4, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="tensors\\[0\\]: holds NaN"):
        TensorData(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="tensors\\[0\\]: expected a tensor"):
        TensorData([1.0, 2.0])
    with pytest.raises(ValueError, match="batch_size: 0"):
        next(TensorData(torch.zeros(3)).batches(0, 0, 0))


def test_tensor_data_is_a_data_source_validated_on_the_whole_data():
    from pyro_vae.data_source import WHOLE_DATA, DataSource

    X, y = torch.randn(10, 2), torch.randn(10)
    data = TensorData(X, y)
    assert isinstance(data, DataSource) and not data.per_datapoint and data.num_train == 10
    plan = data.validation_set(local_guide=True, check=None)
    assert plan.kind == WHOLE_DATA and plan.whole_data and plan.draws == 100
    assert plan.args[0] is X and plan.args[1] is y
    data.check_training_data(check=None)  # the tensors were checked when built


def test_indexed_batches_give_each_batch_its_rows_and_can_drop_the_last():
    X = torch.arange(10.0)
    data = TensorData(X)
    batches = list(data.indexed_batches(4, epoch=0, seed=0))
    assert all(torch.equal(rows.float(), x) for rows, (x,) in batches)
    assert [len(rows) for rows, _ in data.indexed_batches(4, 0, 0, drop_last=True)] == [4, 4]
    assert data.steps_per_epoch(4, drop_last=True) == 2
