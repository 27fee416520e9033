"""The guide checks and the S draws every diagnostic starts from."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.cavi import BayesianLinearRegression
from pyro_vae.diagnostics.draws import (
    as_guide,
    draw,
    log_density_per_draw,
    probe,
    variational_guide,
)
from pyro_vae.plates import data_plate
from tests.pyro_vae.diagnostics.test_inference_data import A0, B0, LAM0


def local_model(x):
    with data_plate(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def local_guide(x):
    with data_plate(x):
        pyro.sample("z", dist.Normal(0.5 * x, 0.8))


def test_variational_guide_draws_each_site_from_its_distribution():
    guide = variational_guide({"a": dist.Normal(3.0, 1e-3), "b": dist.Bernoulli(1.0)})
    trace = pyro.poutine.trace(guide).get_trace()
    assert trace.nodes["a"]["value"] == pytest.approx(3.0, abs=0.01)
    assert trace.nodes["b"]["value"] == 1.0
    assert set(guide.distributions) == {"a", "b"} and "a, b" in guide.__name__
    with pytest.raises(ValueError, match="distributions: empty"):
        variational_guide({})


def test_a_fitted_cavi_estimator_stands_in_for_its_guide(data):
    fit = BayesianLinearRegression(A0, B0, LAM0).fit(*data)
    guide = as_guide(fit)
    assert set(guide.distributions) == set(fit.variational_distributions())
    assert as_guide(local_guide) is local_guide


def test_an_estimator_with_its_own_variational_guide_stands_in_by_it(data):
    class Fitted:  # as AutoCAVI: a guide of its own beside its marginals
        def variational_guide(self):
            return local_guide

        def variational_distributions(self):
            raise AssertionError("the marginals are not read when a guide is offered")

    assert as_guide(Fitted()) is local_guide


def test_probe_reads_the_nesting_and_the_data_plate():
    x = torch.randn(7)
    nesting, guide_tr, plate = probe(local_model, local_guide, (x,), {}, local=True)
    assert (nesting, plate) == (1, "data") and "z" in guide_tr.nodes
    assert probe(local_model, local_guide, (x,), {})[2] is None


def test_probe_refuses_guides_that_do_not_fit_the_model():
    x = torch.randn(7)

    def observing_guide(x):
        local_guide(x)
        pyro.sample("x", dist.Normal(0.0, 1.0).expand([7]).to_event(1))

    with pytest.raises(ValueError, match=r"samples \['x'\], which the model observes"):
        probe(local_model, observing_guide, (x,), {})

    def prior_only(x):
        with data_plate(x):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="need at least one latent and one observed site"):
        probe(prior_only, local_guide, (x,), {})


def test_draws_lie_at_the_particle_dim_and_their_log_densities_add_up():
    x = torch.randn(7)
    guide_tr, model_tr, rank, _ = draw(local_model, local_guide, (x,), {}, 5)
    assert rank == 2 and model_tr.nodes["z"]["value"].shape == (5, 7)
    log_q = log_density_per_draw(guide_tr, rank, 5)
    z = guide_tr.nodes["z"]["value"]
    expected = dist.Normal(0.5 * x, 0.8).log_prob(z).sum(-1).double()
    assert log_q.dtype == torch.float64 and torch.allclose(log_q, expected, atol=1e-5)
    assert math.isfinite(float(log_density_per_draw(model_tr, rank, 5).sum()))
