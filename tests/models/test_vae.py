import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from models.vae import VAE
from pyro_vae.data import Preprocessing, load_data
from pyro_vae.evaluate import elbo_per_datapoint, iwae_log_likelihood


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "categorical"])
def test_each_likelihood_gives_a_finite_elbo_and_gradients(likelihood):
    data = load_data("digits", Preprocessing(likelihood))
    model = VAE(
        data.x_dim,
        latent_dim=5,
        hidden_dims=(32,),
        likelihood=likelihood,
        levels=data.info.get("levels"),
    )
    guide = model.make_guide()
    x = data.train_x[:16]
    for elbo in (Trace_ELBO(), TraceMeanField_ELBO()):
        loss = elbo.differentiable_loss(model, guide, x)
        assert torch.isfinite(loss)
        loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert torch.isfinite(elbo_per_datapoint(model, guide, x)).all()
    assert torch.isfinite(iwae_log_likelihood(model, guide, x, 8)).all()


def test_minibatch_loss_is_scaled_to_the_dataset():
    model = VAE(10, latent_dim=2, hidden_dims=(8,))
    guide = model.make_guide()
    x = torch.bernoulli(torch.full((6, 10), 0.5))
    pyro.set_rng_seed(3)
    unscaled = Trace_ELBO().loss(model, guide, x)
    pyro.set_rng_seed(3)
    scaled = Trace_ELBO().loss(model, guide, x, num_data=60)
    assert scaled == pytest.approx(10 * unscaled, rel=1e-5)


def test_analytic_kl_matches_monte_carlo_kl_in_expectation():
    model = VAE(10, latent_dim=3, hidden_dims=(8,))
    guide = model.make_guide()
    x = torch.bernoulli(torch.full((4, 10), 0.5))
    mc = Trace_ELBO(num_particles=20000, vectorize_particles=True).loss(model, guide, x)
    analytic = TraceMeanField_ELBO(num_particles=20000, vectorize_particles=True).loss(
        model, guide, x
    )
    # Both estimate the same ELBO (4 points, ~8 nats sd per draw): SE ≈ 0.1 nats.
    assert mc == pytest.approx(analytic, abs=0.5)


def test_decode_and_generate_are_images_in_range():
    model = VAE(64, latent_dim=2, hidden_dims=(8,), likelihood="categorical", levels=17)
    images = model.generate(5)
    assert images.shape == (5, 64) and (images >= 0).all() and (images <= 16).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"latent_dim": 0}, "latent_dim: 0"),
        ({"hidden_dims": (0,)}, "width 0"),
        ({"activation": "swish"}, "activation: 'swish'"),
    ],
)
def test_bad_sizes_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VAE(10, **kwargs)


@pytest.fixture(scope="module")
def trained_digits_vae():
    from pyro_vae.train import TrainConfig, fit

    data = load_data("digits", Preprocessing("bernoulli"))
    pyro.set_rng_seed(0)
    model = VAE(data.x_dim, latent_dim=8, hidden_dims=(64,))
    guide = model.make_guide()
    fit(model, guide, data, Trace_ELBO(), TrainConfig(epochs=30, lr=3e-3, progress=False))
    return model, guide, data


def test_iwae_is_above_the_elbo_and_increases_with_k_on_a_trained_vae(trained_digits_vae):
    model, guide, data = trained_digits_vae
    x = data.test_x.repeat(10, 1)  # 1,800 independent estimates per K
    previous = elbo_per_datapoint(model, guide, x, num_samples=1)
    differences = []
    for k in (1, 10, 100):
        current = iwae_log_likelihood(model, guide, x, k)
        diff = current - previous  # paired by datapoint, independent draws
        differences.append((diff.mean().item(), diff.std().item() / diff.numel() ** 0.5))
        previous = current
    (same, se_same), (up_10, se_10), (up_100, se_100) = differences
    assert abs(same) < 4 * se_same  # K = 1 is the ELBO estimator itself
    assert up_10 > 4 * se_10 and up_100 > 4 * se_100  # measured: about 14 and 7 SE
