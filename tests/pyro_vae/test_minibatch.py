"""The fit loop's minibatch handler: full size N and true rows for the per-datapoint plate."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule

from pyro_vae.minibatch import (
    DataPlateSizeError,
    DataPlateSubsample,
    Minibatched,
    align_autoguide,
)
from pyro_vae.plates import data_plate

N, ROWS = 40, torch.tensor([3, 17, 5, 39, 0, 22, 8, 11, 30, 2])


def plain_model(x):
    """Pyro's way: a global mean, local codes in pyro.plate("data", len(x)), no num_data."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)) as rows:
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    return rows


def test_local_sites_are_scaled_by_n_over_b_and_global_ones_are_not():
    x = torch.linspace(-1.0, 1.0, len(ROWS))
    with DataPlateSubsample("data", N, ROWS):
        trace = poutine.trace(plain_model).get_trace(x)
    assert trace.nodes["mu"]["scale"] == 1.0
    assert trace.nodes["z"]["scale"] == trace.nodes["x"]["scale"] == N / len(ROWS)
    assert torch.equal(trace.nodes["_RETURN"]["value"], ROWS)
    trace.compute_log_prob()
    mu, z = trace.nodes["mu"]["value"], trace.nodes["z"]["value"]
    # log p(mu) + (N / B) Σ_n [log p(z_n | mu) + log p(x_n | z_n)], computed by hand
    expected = (
        dist.Normal(0.0, 1.0).log_prob(mu)
        + N / len(ROWS) * (dist.Normal(mu, 1.0).log_prob(z) + dist.Normal(z, 1.0).log_prob(x)).sum()
    )
    torch.testing.assert_close(trace.log_prob_sum(), expected)


def test_a_plate_already_of_full_size_is_not_scaled_twice():
    def model(x, num_data=None):
        with data_plate(x, num_data):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    with DataPlateSubsample("data", N, ROWS):
        trace = poutine.trace(Minibatched(model, "data", N)).get_trace(torch.zeros(10))
    assert trace.nodes["x"]["scale"] == N / 10


def test_a_plate_of_another_size_is_refused():
    def model(x):
        with pyro.plate("data", 60, subsample=torch.arange(len(x))):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    with pytest.raises(DataPlateSizeError, match="declared with size 60 .* the data has 40 rows"):
        with DataPlateSubsample("data", N, ROWS):
            model(torch.zeros(10))


def test_num_data_goes_only_to_callables_that_take_it():
    seen = []

    def takes(x, num_data=None):
        seen.append(num_data)

    def does_not(x):
        seen.append("none")

    Minibatched(takes, "data", N)(torch.zeros(3), subsample=torch.arange(3))
    Minibatched(does_not, "data", N)(torch.zeros(3), subsample=torch.arange(3))
    assert seen == [N, "none"]


class _TakesNumData(PyroModule):
    def forward(self, x, num_data=None):
        self.seen = num_data


class _DoesNotTakeIt(torch.nn.Module):
    def forward(self, x):
        self.seen = "none"


def test_a_module_is_read_by_its_forward():
    # a module's own signature is (*args, **kwargs): no PyroModule model or guide was ever
    # given num_data (tester DW: M2's α = 0.1·N came out 0.1·|B|)
    takes, does_not = _TakesNumData(), _DoesNotTakeIt()
    Minibatched(takes, "data", N)(torch.zeros(3), subsample=torch.arange(3))
    Minibatched(does_not, "data", N)(torch.zeros(3), subsample=torch.arange(3))
    assert (takes.seen, does_not.seen) == (N, "none")


@pytest.mark.parametrize("rows", [ROWS, ROWS[:3], torch.arange(N)])
def test_an_autoguide_picks_the_rows_of_the_batch(rows):
    # Set up on a batch of 10, then called on batches of other sizes (a last partial batch,
    # the whole data): each z_n's location must be that row's own parameter.
    x = torch.zeros(N)
    guide = AutoNormal(plain_model)
    align_autoguide(guide, "data", -1, N)
    wrapped = Minibatched(guide, "data", N)
    wrapped(x[ROWS], subsample=ROWS)
    with torch.no_grad():
        guide.locs.z.copy_(torch.arange(N, dtype=torch.float32))
    trace = poutine.trace(wrapped).get_trace(x[rows], subsample=rows)
    assert torch.equal(trace.nodes["z_unconstrained"]["fn"].mean, rows.float())
