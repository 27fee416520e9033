"""The empty guide: q over nothing, so the ELBO is the model's log-likelihood."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_vae.estimators.compiled import should_record
from pyro_vae.guides import EmptyGuide


def test_empty_guide_samples_nothing():
    trace = poutine.trace(EmptyGuide()).get_trace(torch.rand(2, 3))
    assert not [n for n, s in trace.nodes.items() if s["type"] == "sample"]


def test_it_returns_nothing_and_holds_no_parameters():
    guide = EmptyGuide()
    assert guide(torch.rand(4, 2), num_data=40) is None
    assert list(guide.parameters()) == []


def test_the_elbo_of_an_all_observed_model_is_its_log_likelihood():
    # x_n ~ N(μ, 2) with μ a point parameter: −ELBO = −Σ_n log N(x_n; μ, 2), exactly
    x = torch.tensor([0.3, -1.2, 2.5, 0.0])

    def model(x, num_data=None):
        mu = pyro.param("mu", torch.tensor(0.7))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(mu, 2.0), obs=x)

    loss = Trace_ELBO().loss(model, EmptyGuide(), x)
    assert loss == pytest.approx(-float(dist.Normal(0.7, 2.0).log_prob(x).sum()), rel=1e-6)


def test_it_declares_itself_recordable():
    def model(x, num_data=None):
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    model.recordable = True
    assert should_record(Trace_ELBO(), model, EmptyGuide()) is None
    assert should_record(Trace_ELBO(), model, lambda x, num_data=None: None) is not None
