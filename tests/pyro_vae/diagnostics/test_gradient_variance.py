"""Gradient mean, variance and SNR at fixed parameters, against a closed form."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.diagnostics.gradient_variance import gradient_variance
from pyro_vae.estimators import get


def model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def guide(x):
    pyro.sample("z", dist.Normal(pyro.param("guide.m", torch.tensor(0.2)), 1.0))


def test_pathwise_gradient_variance_matches_the_closed_form():
    # With z = m + ε: d/dm [log N(x; z, 1) + log N(z; 0, 1) − log N(z; m, 1)]
    #   = (x − z) − z − 0 = x − 2m − 2ε, so mean x − 2m = 0.6, variance 4, SNR 0.3.
    pyro.set_rng_seed(0)
    stats = gradient_variance(model, guide, get("trace"), torch.tensor(1.0), num_draws=4000)
    g = stats["guide"]
    assert -g.mean.item() == pytest.approx(1.0 - 0.4, abs=4 * 2 / 4000**0.5)
    assert g.variance == pytest.approx(4.0, rel=0.1)  # sd of a variance estimate ≈ √(2/n)
    assert g.snr == pytest.approx(0.3, rel=0.1) and g.seconds_per_draw > 0


def test_score_function_is_noisier_than_pathwise_here():
    pyro.set_rng_seed(0)
    x = torch.tensor(1.0)
    pathwise = gradient_variance(model, guide, get("trace"), x, num_draws=500)["guide"]
    score = gradient_variance(model, guide, get("score"), x, num_draws=500)["guide"]
    assert score.variance > 2 * pathwise.variance


def test_bad_draws():
    with pytest.raises(ValueError, match="num_draws: 1"):
        gradient_variance(model, guide, get("trace"), torch.tensor(1.0), num_draws=1)


def test_an_estimator_out_of_place_is_named_before_any_draw():
    # (estimator, model, guide, x) for (model, guide, estimator, x): an AttributeError,
    # "'function' object has no attribute 'loss_and_grads'", at the first draw
    with pytest.raises(
        TypeError,
        match=r"estimator: <function guide .*> \(the third argument\) is not an estimator; "
        r".*an estimator was passed as model",
    ):
        gradient_variance(get("trace"), model, guide, torch.tensor(1.0))
    with pytest.raises(TypeError, match=r"estimator: 'trace' \(the third argument\)"):
        gradient_variance(model, guide, "trace", torch.tensor(1.0))
    assert not pyro.get_param_store().keys()  # refused before any run
