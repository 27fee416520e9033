"""Gradient mean, variance and SNR at fixed parameters, against a closed form."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.diagnostics.gradient_variance import gradient_variance, signal_to_noise
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


def _gaussian_draws(signal: float, replications: int, n: int = 200, p: int = 50):
    """``replications`` sets of n draws from N(μ, I_P), every μ_i = ``signal``: the true
    SNR is ‖μ‖ / √tr I = ``signal``."""
    generator = torch.Generator().manual_seed(0)
    return signal + torch.randn(replications, n, p, generator=generator, dtype=torch.float64)


def test_the_snr_has_no_floor_of_one_over_root_n():
    """Tester EU: the plug-in ‖ḡ‖ / √V has expectation about √(SNR² + 1/n): 0.122 for a
    true SNR of 0.1 at n = 200, and 0.071 for a true 0. Over 200 replications the estimate
    is within 0.005 of 0.1 (its per-replication sd is about 0.011, so 6 standard errors,
    with room for the square root's Jensen bias of about −0.0006), and at a true 0 it
    averages below 0.03 (about half the replications read 0)."""
    estimates = [signal_to_noise(draws)[2] for draws in _gaussian_draws(0.1, 200)]
    assert sum(estimates) / len(estimates) == pytest.approx(0.1, abs=0.005)
    plug_in = [float(d.mean(0).norm() / d.var(0).sum().sqrt()) for d in _gaussian_draws(0.1, 20)]
    assert sum(plug_in) / len(plug_in) > 0.115  # what the estimate was
    zero = [signal_to_noise(draws)[2] for draws in _gaussian_draws(0.0, 200)]
    assert sum(zero) / len(zero) < 0.03 and sorted(zero)[90] == 0.0


def test_the_snr_of_draws_that_never_vary():
    ones = torch.ones(5, 3)
    assert signal_to_noise(ones)[1:] == (0.0, float("inf"))
    assert torch.isnan(torch.tensor(signal_to_noise(torch.zeros(5, 3))[2]))


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


def test_non_finite_data_are_refused_by_count_and_row():
    """Tester FK: NaN in the data failed in Pyro's constraint check on the encoder's loc."""
    from models.vae import VAE
    from pyro_vae import estimators

    vae = VAE(8, latent_dim=2, hidden_dims=(8,))
    x = torch.rand(5, 8, generator=torch.Generator().manual_seed(0)).round()
    x[2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"args: 1 of its 40 entries are NaN or infinite"):
        gradient_variance(vae, vae.make_guide(), estimators.get("trace"), x, num_draws=3)
