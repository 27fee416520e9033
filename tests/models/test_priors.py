"""The learned priors: densities against brute force, gradients, samples, bad input."""

import math

import pytest
import torch

from models.priors import GaussianMixturePrior, VampPrior
from pyro_vae.guides import AmortizedNormal


def _log_normal(z, loc, scale):
    """Σ_d log N(z_d; loc_d, scale_d), written out."""
    return (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def test_mixture_log_density_is_the_log_sum_of_its_weighted_components():
    torch.manual_seed(0)
    prior = GaussianMixturePrior(latent_dim=3, components=4)
    with torch.no_grad():
        prior.log_scale.normal_(0, 0.5)
        prior.logits.normal_()
    z = 2 * torch.randn(7, 3)
    log_pi = prior.logits.log_softmax(0)
    terms = [log_pi[k] + _log_normal(z, prior.loc[k], prior.log_scale[k].exp()) for k in range(4)]
    brute = torch.stack(terms).logsumexp(0)
    got = prior((7,)).log_prob(z)
    assert got.shape == (7,)
    torch.testing.assert_close(got, brute, rtol=1e-5, atol=1e-5)
    # broadcast over a leading particle dim, as vectorized ELBOs draw them
    assert prior((7,)).log_prob(z.expand(5, 7, 3)).shape == (5, 7)


def test_vamp_prior_is_the_mean_of_the_encoder_s_posteriors_at_its_pseudo_inputs():
    torch.manual_seed(0)
    encoder = AmortizedNormal(x_dim=6, latent_dim=2, hidden_dims=(5,))
    prior = VampPrior(encoder, x_dim=6, components=3)
    z = torch.randn(4, 2)
    by_hand = []
    for k in range(3):
        h = encoder.trunk(prior.pseudo_inputs[k])
        loc, scale = encoder.loc_head(h), encoder.log_scale_head(h).exp()
        by_hand.append(_log_normal(z, loc, scale))
    expected = torch.stack(by_hand).logsumexp(0) - math.log(3)
    torch.testing.assert_close(prior((4,)).log_prob(z), expected, rtol=1e-5, atol=1e-5)


def test_vamp_prior_gradients_reach_the_pseudo_inputs_and_the_encoder():
    torch.manual_seed(0)
    encoder = AmortizedNormal(x_dim=6, latent_dim=2, hidden_dims=(5,))
    prior = VampPrior(encoder, x_dim=6, components=3)
    prior((4,)).log_prob(torch.randn(4, 2)).sum().backward()
    assert prior.pseudo_input_weights.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
    # the encoder is held, not owned: its weights are the guide's, not the prior's
    assert [n for n, _ in prior.named_parameters()] == ["pseudo_input_weights"]


def test_pseudo_inputs_start_inside_the_data_range_and_are_clipped_to_it():
    torch.manual_seed(0)
    prior = VampPrior(AmortizedNormal(4, 2, (3,)), x_dim=4, components=50, data_max=16.0)
    u = prior.pseudo_inputs
    assert u.shape == (50, 4) and u.min() >= 0 and u.max() <= 16
    assert u.std() > 3  # uniform on [0, 16]: sd 4.6
    with torch.no_grad():
        prior.pseudo_input_weights[0, 0] = -3.0
        prior.pseudo_input_weights[0, 1] = 20.0
    assert prior.pseudo_inputs[0, 0] == 0 and prior.pseudo_inputs[0, 1] == 16


def test_pseudo_inputs_of_unbounded_data_are_not_clipped():
    # tester EL: on a standardized table (--likelihood normal) they were clipped to [0, 1],
    # and a third of their coordinates sat at 0, pushed below it
    torch.manual_seed(0)
    prior = VampPrior(AmortizedNormal(4, 2, (3,)), x_dim=4, components=200, data_max=None)
    u = prior.pseudo_inputs
    assert (u < 0).float().mean() > 0.4 and abs(u.std() - 1) < 0.1  # N(0, 1): 800 draws
    with torch.no_grad():
        prior.pseudo_input_weights[0, :2] = torch.tensor([-5.0, 7.0])
    assert prior.pseudo_inputs[0, :2].tolist() == [-5.0, 7.0]


def test_a_vae_on_standardized_columns_gives_its_vampprior_the_whole_line():
    from models.vae import VAE

    bounds = {}
    for likelihood in ("normal", "gaussian", "bernoulli"):
        model = VAE(4, latent_dim=2, hidden_dims=(3,), likelihood=likelihood, prior="vamp")
        bounds[likelihood] = model.learned_prior.data_max
    assert bounds == {"normal": None, "gaussian": 1.0, "bernoulli": 1.0}
    model = VAE(4, 2, (3,), likelihood="categorical", levels=5, prior="vamp")
    assert model.learned_prior.data_max == 4.0


def test_weights_saved_before_the_range_was_kept_are_read_with_the_range_they_trained_with():
    """Tester EN: a VampPrior table run trained clipped to [0, 1] was evaluated unclipped,
    its prior another than it trained. Weights without ``data_range`` are read clipped to
    [0, 1] where the data have no bounds, with their own range otherwise; weights with it
    keep theirs."""
    torch.manual_seed(0)
    unbounded = VampPrior(AmortizedNormal(4, 2, (3,)), x_dim=4, components=3, data_max=None)
    weights = torch.tensor([[-2.0, 0.5, 1.5, 0.2]] * 3)
    old = {"pseudo_input_weights": weights}  # a checkpoint from before the range was kept
    unbounded.load_state_dict(old)
    assert torch.equal(unbounded.pseudo_inputs, weights.clamp(0.0, 1.0))
    levels = VampPrior(AmortizedNormal(4, 2, (3,)), x_dim=4, components=3, data_max=4.0)
    levels.load_state_dict({"pseudo_input_weights": weights * 3})
    assert torch.equal(levels.pseudo_inputs, (weights * 3).clamp(0.0, 4.0))
    fresh = VampPrior(AmortizedNormal(4, 2, (3,)), x_dim=4, components=3, data_max=None)
    fresh.load_state_dict(VampPrior(AmortizedNormal(4, 2, (3,)), 4, 3, None).state_dict())
    fresh.pseudo_input_weights.data.copy_(weights)
    assert torch.equal(fresh.pseudo_inputs, weights)  # ±inf kept: not clipped


@pytest.mark.parametrize("make", [lambda: GaussianMixturePrior(2, 3), lambda: _vamp(3)])
def test_samples_have_the_batch_and_event_shapes(make):
    torch.manual_seed(0)
    prior = make()
    assert prior().sample().shape == (2,)
    assert prior((5,)).sample((4,)).shape == (4, 5, 2)
    assert prior((5,)).batch_shape == (5,) and prior((5,)).event_shape == (2,)


def _vamp(components):
    return VampPrior(AmortizedNormal(4, 2, (3,)), x_dim=4, components=components)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: GaussianMixturePrior(2, 0), "prior_components: 0 is not a positive integer"),
        (lambda: GaussianMixturePrior(0, 2), "latent_dim: 0 is not a positive integer"),
        (lambda: _vamp(2.5), "prior_components: 2.5 is not a positive integer"),
        (
            lambda: VampPrior(AmortizedNormal(4, 2, (3,)), 4, 2, data_max=0),
            "data_max: 0; expected a positive number",
        ),
        (lambda: VampPrior(torch.nn.Linear(4, 2), 4, 2), "encoder: Linear has no encode"),
    ],
)
def test_bad_arguments_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()
