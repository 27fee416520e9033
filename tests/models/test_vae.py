import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from models.vae import VAE
from pyro_vae import estimators
from pyro_vae.data import Preprocessing, load_data
from pyro_vae.estimators import get
from pyro_vae.estimators.compiled import should_record
from pyro_vae.evaluate import elbo_per_datapoint, iwae_log_likelihood, log_importance_weights
from tests.pyro_vae.guides.amortized_checks import check_recorded_steps


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


# --- learned priors (models.priors): prior="mog" and prior="vamp" ---

PRIORS = [("mog", 3), ("vamp", 3)]


def test_the_normal_prior_is_the_default_and_draws_nothing_more():
    torch.manual_seed(0)
    default = VAE(10, latent_dim=2, hidden_dims=(4,))
    default_guide = default.make_guide()
    torch.manual_seed(0)
    named = VAE(10, latent_dim=2, hidden_dims=(4,), prior="normal")
    named_guide = named.make_guide()
    for a, b in ((default, named), (default_guide, named_guide)):
        assert a.state_dict().keys() == b.state_dict().keys()
        assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert isinstance(named.prior().base_dist, torch.distributions.Normal)
    assert named.tied_guide is None and named.make_guide() is not named.make_guide()


def test_a_vamp_model_holds_its_guide_and_owns_only_the_pseudo_inputs():
    model = VAE(10, latent_dim=2, hidden_dims=(4,), prior="vamp", prior_components=3)
    guide = model.make_guide()
    assert guide is model.make_guide() is model.tied_guide is model.learned_prior.encoder
    guide_weights = {id(p) for p in guide.parameters()}
    assert not guide_weights & {id(p) for p in model.parameters()}
    assert "learned_prior.pseudo_input_weights" in model.state_dict()
    assert not any(k.startswith("learned_prior.encoder") for k in model.state_dict())
    mog = VAE(10, latent_dim=2, hidden_dims=(4,), prior="mog")
    assert mog.tied_guide is None and mog.learned_prior.loc.shape == (10, 2)  # K = 10


def test_categorical_pixels_give_pseudo_inputs_on_their_levels():
    model = VAE(10, 2, (4,), likelihood="categorical", levels=17, prior="vamp")
    prior = model.learned_prior
    assert prior.data_max == 16 and prior.pseudo_inputs.shape == (50, 10)


@pytest.mark.parametrize("prior, components", PRIORS)
def test_analytic_kl_falls_back_to_monte_carlo_for_a_mixture_prior(prior, components):
    # No kl_divergence(Normal, MixtureSameFamily) is registered, so Pyro's
    # TraceMeanField_ELBO scores log p(z) − log q(z | x) at the draw: Trace_ELBO's number.
    model = VAE(10, latent_dim=3, hidden_dims=(8,), prior=prior, prior_components=components)
    guide = model.make_guide()
    x = torch.bernoulli(torch.full((4, 10), 0.5))
    with pytest.raises(NotImplementedError):
        torch.distributions.kl_divergence(guide.encode(x).to_event(1), model.prior((4,)))
    pyro.set_rng_seed(1)
    mean_field = TraceMeanField_ELBO().loss(model, guide, x)
    pyro.set_rng_seed(1)
    trace = Trace_ELBO().loss(model, guide, x)
    assert mean_field == pytest.approx(trace, rel=1e-6)


@pytest.mark.parametrize("prior, components", PRIORS)
def test_iwae_log_likelihood_with_a_mixture_prior_equals_quadrature(prior, components):
    from pyro_vae.evaluate import log_importance_weights

    torch.manual_seed(0)
    model = VAE(5, latent_dim=1, hidden_dims=(4,), prior=prior, prior_components=components)
    guide = model.make_guide()
    if prior == "mog":  # three separated modes, unequal weights
        with torch.no_grad():
            model.learned_prior.loc.copy_(torch.tensor([[-2.0], [0.0], [2.5]]))
            model.learned_prior.log_scale.fill_(math.log(0.5))
            model.learned_prior.logits.copy_(torch.tensor([0.5, -1.0, 0.0]))
    x = torch.bernoulli(torch.full((4, 5), 0.5))
    with torch.no_grad():
        grid = torch.linspace(-15, 15, 30001)[:, None]  # a 1-D latent: exact by quadrature
        log_prior = model.prior((grid.shape[0],)).log_prob(grid)
        likelihood = model.likelihood.distribution(model.decoder(grid))
        exact = torch.stack(
            [(log_prior + likelihood.log_prob(row)).logsumexp(0) for row in x]
        ) + math.log(grid[1, 0] - grid[0, 0])
        k = 20000
        pyro.set_rng_seed(2)
        estimate = iwae_log_likelihood(model, guide, x, num_samples=k)
        lw = log_importance_weights(model, guide, x, k)
    # delta method: sd of log mean(w) ≈ sd(w) / (√K mean(w)); the bias is its square / 2
    w = (lw - lw.max(0).values).exp()
    se = (w / w.mean(0)).std(0) / math.sqrt(k)
    assert (se < 0.05).all()
    assert ((estimate - exact).abs() < 4 * se + 1e-4).all(), (estimate, exact, se)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", ["trace", "analytic-kl"])
@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_a_mixture_prior_is_recorded_and_replayed_bit_for_bit(prior, name):
    # --compile auto records a VAE whatever its prior (VAE declares recordable = True):
    # the mixture's log-density has no branch on values, so the replay is exact.
    from pyro_vae.estimators.compiled import should_record

    assert should_record(get("trace"), VAE(4, 2, (3,), prior=prior)) is None
    g = torch.Generator().manual_seed(1)
    batches = [(torch.rand(n, 16, generator=g) > 0.5).float() for n in (20, 20, 7)]
    check_recorded_steps(
        None,
        batches,
        recordings=2,
        make_model=lambda: VAE(16, 3, (8,), prior=prior, prior_components=4),
        estimator=name,
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prior": "laplace"}, "prior: 'laplace' is not one of 'normal', 'mog', 'vamp'"),
        ({"prior_components": 5}, "prior_components: 5 given, but prior='normal' has none"),
        ({"prior": "mog", "prior_components": 0}, "prior_components: 0 is not a positive"),
        ({"prior": "vamp", "prior_components": "50"}, "prior_components: '50' is not a pos"),
    ],
)
def test_bad_prior_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VAE(10, **kwargs)


def _conv_vae(likelihood="bernoulli", image_shape=(8, 8), levels=None):
    """A conv VAE small enough for a test: widths 2 and 4, one hidden layer of 8."""
    d = math.prod(image_shape)
    return VAE(
        d,
        4,
        (8,),
        likelihood,
        levels,
        arch="conv",
        image_shape=image_shape,
        channels=(2, 4),
    )


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "categorical"])
@pytest.mark.parametrize("image_shape", [(8, 8), (3, 8, 8)])
def test_a_conv_vae_scores_each_likelihood_on_grey_and_colour_images(likelihood, image_shape):
    pyro.set_rng_seed(0)
    d = math.prod(image_shape)
    levels = 5 if likelihood == "categorical" else None
    model = _conv_vae(likelihood, image_shape, levels)
    guide = model.make_guide()
    assert guide.trunk.out_features == 8
    x = {
        "bernoulli": torch.bernoulli(torch.full((6, d), 0.5)),
        "gaussian": torch.rand(6, d),
        "categorical": torch.randint(0, 5, (6, d)).float(),
    }[likelihood]
    trace = poutine.trace(poutine.replay(model, poutine.trace(guide).get_trace(x))).get_trace(x)
    assert trace.nodes["x"]["fn"].event_shape == (d,) and trace.nodes["x"]["fn"].batch_shape == (6,)
    loss = Trace_ELBO().differentiable_loss(model, guide, x)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.decode(torch.zeros(3, 4)).shape == (3, d)
    assert torch.isfinite(iwae_log_likelihood(model, guide, x, 4)).all()


def test_a_conv_decoders_planes_are_each_pixels_own_parameters():
    """log p(x | z) from the flattened decoder output equals, pixel by pixel, the density
    read off the transposed convolution's output planes at that pixel: the categorical's L
    logits of channel c at (h, w), the Gaussian's mean and scale planes."""
    torch.manual_seed(0)
    z = torch.randn(2, 4)
    categorical = _conv_vae("categorical", (3, 8, 8), levels=5)
    x = torch.randint(0, 5, (2, 3, 8, 8))
    planes = categorical.decoder.net(z).reshape(2, 3, 5, 8, 8)  # [B, C, L, H, W]
    by_pixel = torch.log_softmax(planes, 2).gather(2, x[:, :, None]).sum((1, 2, 3, 4))
    h = categorical.decoder(z)
    ours = categorical.likelihood.distribution(h).log_prob(x.reshape(2, -1).float())
    torch.testing.assert_close(ours, by_pixel)
    gaussian = _conv_vae("gaussian", (3, 8, 8))
    x = torch.rand(2, 3, 8, 8)
    planes = gaussian.decoder.net(z).reshape(2, 2, 3, 8, 8)  # [B, (mean, scale), C, H, W]
    scale = gaussian.likelihood.min_scale + torch.nn.functional.softplus(planes[:, 1])
    normal = torch.distributions.Normal(torch.sigmoid(planes[:, 0]), scale)
    ours = gaussian.likelihood.distribution(gaussian.decoder(z)).log_prob(x.reshape(2, -1))
    torch.testing.assert_close(ours, normal.log_prob(x).sum((1, 2, 3)))


def test_a_conv_vaes_vectorized_iwae_equals_its_loop_over_the_same_draws():
    """The decoder sees z of [K, B, latent_dim] when particles are vectorized and [B,
    latent_dim] in a loop; folding the leading dims must give the same log-weights. Torch's
    CPU normal sampler fills blocks of 16 from one uniform stream, so with B·latent_dim a
    multiple of 16 the loop draws the vectorized draws, one particle after another."""
    model = _conv_vae()
    guide = model.make_guide()
    x = torch.bernoulli(torch.rand(4, 64, generator=torch.Generator().manual_seed(0)))
    pyro.set_rng_seed(1)
    vectorized = log_importance_weights(model, guide, x, 6, vectorize_particles=True)
    pyro.set_rng_seed(1)
    looped = log_importance_weights(model, guide, x, 6, vectorize_particles=False)
    assert vectorized.shape == (6, 4)
    torch.testing.assert_close(vectorized, looped, rtol=1e-5, atol=1e-4)
    pyro.set_rng_seed(1)
    together = iwae_log_likelihood(model, guide, x, 6, vectorize_particles=True)
    pyro.set_rng_seed(1)
    apart = iwae_log_likelihood(model, guide, x, 6, vectorize_particles=False)
    torch.testing.assert_close(together, apart, rtol=1e-5, atol=1e-4)
    by_hand = torch.logsumexp(vectorized, 0) - math.log(6)
    torch.testing.assert_close(together, by_hand, rtol=1e-5, atol=1e-4)


def test_a_conv_vaes_recorded_step_equals_the_eager_one():
    """``--compile`` records conv nets too: two passes over three batches, the same weights
    bit for bit and losses up to float32 summation, one recording per batch shape."""
    g = torch.Generator().manual_seed(1)
    batches = [(torch.rand(n, 64, generator=g) > 0.5).float() for n in (5, 5, 3)]
    model = _conv_vae()
    assert should_record(estimators.get("trace"), model, model.make_guide()) is None
    check_recorded_steps(None, batches, recordings=2, make_model=_conv_vae, num_data=50)


def test_conv_options_are_checked_before_anything_is_built():
    with pytest.raises(ValueError, match=r"image_shape: None; arch='conv' needs"):
        VAE(64, arch="conv")
    with pytest.raises(ValueError, match=r"channels: \(8, 16, 32, 64\) asks for 4 convolutions"):
        VAE(64, arch="conv", image_shape=(8, 8), channels=(8, 16, 32, 64))
    with pytest.raises(ValueError, match="arch: 'cnn' is not one of mlp, conv"):
        VAE(64, arch="cnn")
    with pytest.raises(ValueError, match=r"channels: \(4,\) sizes convolutions, but arch is"):
        VAE(64, channels=(4,))


def test_the_mlp_vae_is_unchanged_by_the_conv_option():
    model = VAE(10, 2, (8,))
    assert model.network_options == {"arch": "mlp"}
    assert sorted(model.state_dict()) == [
        "decoder.0.bias",
        "decoder.0.weight",
        "decoder.2.bias",
        "decoder.2.weight",
    ]
    assert sorted(model.make_guide().state_dict()) == [
        "loc_head.bias",
        "loc_head.weight",
        "log_scale_head.bias",
        "log_scale_head.weight",
        "trunk.0.bias",
        "trunk.0.weight",
    ]
