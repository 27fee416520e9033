"""The amortization gap where every term is known: the linear-Gaussian model, whose exact
posterior is a diagonal Normal, so the local family contains it (approximation gap 0) and
the amortization gap is the encoder's exact KL(q ‖ p(z | x))."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.amortization import amortization_gap
from pyro_vae.plates import data_plate
from tests.pyro_vae.test_evaluate import (
    POST_GAIN,
    POST_VAR,
    B,
    exact_elbo,
    exact_log_likelihood,
    model,
)


class ShrunkEncoder(torch.nn.Module):
    """An amortized guide that is wrong in a known way: mean x0.5, sd x0.6."""

    def encode(self, x):
        return dist.Normal(
            (x - B) @ (0.5 * POST_GAIN).T, (0.6 * POST_VAR.sqrt()).expand(x.shape[0], 2)
        )

    def forward(self, x, num_data=None):
        with data_plate(x, num_data):
            pyro.sample("z", self.encode(x).to_event(1))


def test_gaps_match_the_closed_form():
    x = dist.MultivariateNormal(B, torch.eye(3) * 2).sample((20,))
    result = amortization_gap(
        model, ShrunkEncoder(), x, steps=400, lr=0.05, elbo_samples=400, iwae_samples=2000
    )
    log_p = exact_log_likelihood(x).mean().item()
    true_gap = log_p - exact_elbo(x, 0.5, 0.6).mean().item()
    assert result["elbo_amortized"] == pytest.approx(log_p - true_gap, abs=0.1)
    assert result["elbo_local"] == pytest.approx(log_p, abs=0.02)
    assert result["log_likelihood"] == pytest.approx(log_p, abs=0.02)
    assert result["amortization_gap"] == pytest.approx(true_gap, abs=0.1)
    assert abs(result["approximation_gap"]) < 0.03


def test_zero_steps_are_refused():
    with pytest.raises(ValueError, match="steps: 0"):
        amortization_gap(model, ShrunkEncoder(), torch.zeros(4, 3), steps=0)
