"""VIMCO against the linear-Gaussian model (exact log p(x)) and against IWAE's gradient."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.estimators import IWAELBO, VIMCO
from pyro_vae.plates import data_plate
from tests.pyro_vae.test_evaluate import POST_GAIN, POST_VAR, B, exact_log_likelihood, model

X = torch.tensor([[0.5, -1.0, 0.2], [1.5, 0.3, 1.1], [-0.7, -2.0, 0.0], [0.1, 1.0, 0.4]])


def make_guide(gain, log_scale):
    def guide(x, num_data=None):
        loc = (x - B) @ (gain * POST_GAIN).T
        scale = (POST_VAR.sqrt() * log_scale.exp()).expand_as(loc)
        with data_plate(x, num_data):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return guide


@pytest.mark.parametrize("k", [2, 5])
def test_exact_guide_gives_minus_log_likelihood(k):
    guide = make_guide(torch.tensor(1.0), torch.tensor(0.0))
    loss = VIMCO(num_particles=k).loss(model, guide, X, num_data=8)
    assert loss == pytest.approx(-2 * exact_log_likelihood(X).sum().item(), abs=1e-3)


def test_value_equals_the_iwae_bound_for_the_same_draws():
    guide = make_guide(torch.tensor(0.7), torch.tensor(0.3))
    vimco, iwae = VIMCO(num_particles=4), IWAELBO(num_particles=4)
    vimco.loss(model, guide, X)  # both guess plate nesting once
    iwae.loss(model, guide, X)
    pyro.set_rng_seed(3)
    a = vimco.loss(model, guide, X)
    pyro.set_rng_seed(3)
    assert a == pytest.approx(iwae.loss(model, guide, X), rel=1e-5)


def test_mean_gradient_matches_the_pathwise_iwae_gradient():
    # Both are unbiased for the gradient of E[L_K]; compare means within 4 standard errors.
    gain = torch.tensor(0.7, requires_grad=True)
    log_scale = torch.tensor(0.3, requires_grad=True)
    guide = make_guide(gain, log_scale)
    x = X.repeat(50, 1)
    means = {}
    for name, estimator in (("vimco", VIMCO(num_particles=4)), ("iwae", IWAELBO(4))):
        draws = torch.stack(
            [
                torch.stack(
                    torch.autograd.grad(
                        estimator.differentiable_loss(model, guide, x), [gain, log_scale]
                    )
                )
                for _ in range(300)
            ]
        )
        means[name] = (draws.mean(0), draws.std(0) / math.sqrt(len(draws)))
    (mv, sv), (mi, si) = means["vimco"], means["iwae"]
    assert torch.all((mv - mi).abs() < 4 * torch.sqrt(sv**2 + si**2))
    assert torch.all(mi.abs() > 4 * si)  # the gradient is far from zero: the test has power


def test_bad_use_is_explained():
    with pytest.raises(ValueError, match="num_particles: 1 is too few"):
        VIMCO(num_particles=1)

    def no_plate_model(x):
        pyro.sample("z", dist.Normal(0.0, 1.0))

    def no_plate_guide(x):
        pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="no 'data' plate"):
        VIMCO(2).loss(no_plate_model, no_plate_guide, X)
