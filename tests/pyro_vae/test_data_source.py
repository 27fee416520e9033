import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_vae.data import Preprocessing, load_data
from pyro_vae.data_source import (
    HELD_OUT,
    TRAINING_SET,
    WHOLE_DATA,
    DataSource,
    ShardedSource,
    TrainingBatches,
    ValidationSet,
    epoch_generator,
    shard_of,
)
from pyro_vae.tensor_data import TensorData
from pyro_vae.train import TrainConfig, fit


def test_epoch_generators_depend_on_seed_and_epoch_only():
    def draw(seed, epoch):
        return torch.randperm(10, generator=epoch_generator(seed, epoch))

    assert torch.equal(draw(3, 2), draw(3, 2))
    assert not torch.equal(draw(3, 2), draw(3, 3)) and not torch.equal(draw(3, 2), draw(4, 2))


def test_training_batches_of_images_report_per_datapoint():
    data = load_data("digits", Preprocessing("bernoulli"))
    batches = TrainingBatches(data, batch_size=100, seed=4)
    assert (batches.num_data, batches.steps_per_epoch, batches.divisor) == (1455, 15, 1455.0)
    rows, (x,) = next(iter(batches.of_epoch(0)))
    assert torch.equal(rows, batches.first_rows) and torch.equal(x, batches.first_batch[0])
    assert torch.equal(x, data.train_x[rows])
    assert len(list(batches.of_epoch(1))) == 15


def test_training_batches_of_tensors_report_totals():
    data = TensorData(torch.arange(10.0))
    batches = TrainingBatches(data, batch_size=4, seed=0, drop_last=True)
    assert (batches.num_data, batches.steps_per_epoch, batches.divisor) == (10, 2, 1.0)
    assert [len(rows) for rows, _ in batches.of_epoch(0)] == [4, 4]


def test_something_that_is_no_data_source_is_refused_by_name():
    with pytest.raises(TypeError, match="data: expected pyro_vae.DataSplits or pyro_vae.Tensor"):
        TrainingBatches(torch.zeros(3, 2), batch_size=2, seed=0)


class Coins:
    """A data source of its own: coin flips, validated on their whole-data ELBO."""

    per_datapoint = True

    def __init__(self, flips):
        self.flips = flips

    @property
    def num_train(self):
        return len(self.flips)

    def steps_per_epoch(self, batch_size, drop_last=False):
        return -(-len(self.flips) // batch_size)

    def indexed_batches(self, batch_size, epoch, seed, drop_last=False):
        order = torch.randperm(len(self.flips), generator=epoch_generator(seed, epoch))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            yield rows, (self.flips[rows],)

    def check_training_data(self, check):
        check(self.flips, "coins")

    def validation_set(self, local_guide, check):
        return ValidationSet(WHOLE_DATA, (self.flips,), whole_data=True, draws=10)


def test_fit_trains_on_any_data_source():
    # p ~ Beta(1, 1), x_n ~ Bernoulli(p); 30 of 40 heads: the posterior mean is 31/42.
    def model(x):
        p = pyro.sample("p", dist.Beta(1.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Bernoulli(p), obs=x)

    def guide(x):
        a = pyro.param("a", torch.tensor(1.0), constraint=dist.constraints.positive)
        b = pyro.param("b", torch.tensor(1.0), constraint=dist.constraints.positive)
        pyro.sample("p", dist.Beta(a, b))

    coins = Coins(torch.cat([torch.ones(30), torch.zeros(10)]))
    assert isinstance(coins, DataSource)
    config = TrainConfig(
        epochs=60, batch_size=20, lr=0.1, validate_every=30, patience=None, progress=False
    )
    result = fit(model, guide, coins, Trace_ELBO(), config)
    assert result.validation == WHOLE_DATA and result.data_plate == "data"
    mean = (pyro.param("a") / (pyro.param("a") + pyro.param("b"))).item()
    assert abs(mean - 31 / 42) < 0.08  # from the prior's 0.5


def test_shards_split_rows_as_tensor_split_does():
    for count, world in [(8, 2), (10, 3), (3, 3), (7, 4)]:
        parts = torch.tensor_split(torch.arange(count), world)
        for rank in range(world):
            assert torch.equal(torch.arange(count)[shard_of(count, rank, world)], parts[rank])


def test_sharded_batches_are_the_ranks_slices_of_the_same_global_batches():
    x, y = torch.randn(10, 3), torch.arange(10.0)
    whole = list(TensorData(x, y).indexed_batches(4, epoch=2, seed=1))
    shards = [ShardedSource(TensorData(x, y), rank, 2) for rank in range(2)]
    assert all(s.num_train == 10 and s.steps_per_epoch(4) == 3 for s in shards)
    parts = [list(s.indexed_batches(4, epoch=2, seed=1)) for s in shards]
    for step, (rows, (bx, by)) in enumerate(whole):
        got = [p[step] for p in parts]
        assert torch.equal(torch.cat([r for r, _ in got]), rows)
        assert torch.equal(torch.cat([a[0] for _, a in got]), bx)
        assert torch.equal(torch.cat([a[1] for _, a in got]), by)
    assert [len(p[-1][0]) for p in parts] == [1, 1]  # the last batch of 2 rows
    with pytest.raises(ValueError, match="rank: 2 is not in 0..1"):
        ShardedSource(TensorData(x), 2, 2)


def test_every_rank_is_given_the_whole_set_s_count_of_labels():
    """M2's classifier term divides by N_l, the training rows whose labels are observed:
    a rank's source gave none, and the term fell back to its part's own count."""
    from pyro_vae.labels import LabelledSource

    data = load_data("digits", Preprocessing("bernoulli")).with_labelled_subset(count=30)
    labelled = int(data.train_observed.sum())  # counted here, not by the source
    assert labelled == 30
    for rank in range(2):
        shard = ShardedSource(LabelledSource(data), rank, 2)
        assert shard.keywords == {"num_labelled": labelled}
        assert TrainingBatches(shard, 64, seed=0).keywords == {"num_labelled": labelled}
    assert TrainingBatches(ShardedSource(TensorData(torch.randn(5, 2)), 0, 2), 2, 0).keywords == {}


def test_held_out_validation_is_split_and_the_others_are_not():
    data = load_data("digits", Preprocessing("bernoulli"))
    shards = [ShardedSource(data, rank, 2) for rank in range(2)]
    plans = [s.validation_set(False, lambda x, what: None) for s in shards]
    assert all(p.kind == HELD_OUT for p in plans)
    assert torch.equal(torch.cat([p.args[0] for p in plans]), data.val_x)
    assert [s.validation_rows for s in shards] == [81, 81]
    local = shards[1].validation_set(True, lambda x, what: None)
    assert local.kind == TRAINING_SET and local.args[0].shape[0] == data.num_train
    tensors = ShardedSource(TensorData(torch.randn(5, 2)), 1, 2)
    assert tensors.validation_set(False, None).kind == WHOLE_DATA
    assert tensors.validation_rows is None


def test_a_validation_set_smaller_than_the_ranks_is_refused_naming_the_way_out():
    """Tester CS: one held-out row over 2 ranks was refused without naming the setting that
    makes it (--val-fraction)."""
    data = load_data("digits", Preprocessing("bernoulli"), val_fraction=0.0006)  # 1 row
    assert data.val_x.shape[0] == 1
    refused = r"^validation: 1 held-out rows cannot be split over 2 ranks; .* a larger "
    with pytest.raises(ValueError, match=refused + r"val_fraction \(--val-fraction\), or 0"):
        ShardedSource(data, 1, 2).validation_set(False, lambda x, what: None)


def test_shards_of_memory_mapped_data_are_the_in_memory_shards_and_stay_index_sets(tmp_path):
    import numpy as np

    from pyro_vae.mapped_rows import MappedRows

    images = np.random.default_rng(2).integers(0, 256, (41, 3, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    mapped = load_data(str(tmp_path / "x.npy"), val_fraction=0.25)
    held = load_data(images, val_fraction=0.25)
    for rank in range(2):
        ours, ref = ShardedSource(mapped, rank, 2), ShardedSource(held, rank, 2)
        for (rows, (x,)), (ref_rows, (ref_x,)) in zip(
            ours.indexed_batches(6, 1, 0), ref.indexed_batches(6, 1, 0), strict=True
        ):
            assert torch.equal(rows, ref_rows) and torch.equal(x, ref_x)
        plan, ref_plan = (s.validation_set(False, lambda x, what: None) for s in (ours, ref))
        assert isinstance(plan.args[0], MappedRows)
        assert torch.equal(plan.args[0][:], ref_plan.args[0])
