import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_vae.data import Preprocessing, load_data
from pyro_vae.data_source import (
    WHOLE_DATA,
    DataSource,
    TrainingBatches,
    ValidationSet,
    epoch_generator,
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
