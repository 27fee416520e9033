import pytest
import torch

from models.sbn import SBN
from pyro_vae.estimators import ScoreFunctionELBO
from pyro_vae.evaluate import elbo_per_datapoint, iwae_log_likelihood


def test_sbn_elbo_is_finite_and_bounded_by_the_iwae_estimate():
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((6, 12), 0.3))
    model = SBN(12, latent_dim=4)
    guide = model.make_guide()
    elbo = elbo_per_datapoint(model, guide, x, num_samples=2000)
    # 4 binary latents: log p(x) is a sum over 16 states, exactly.
    states = torch.tensor([[(s >> j) & 1 for j in range(4)] for s in range(16)]).float()
    log_joint = model.prior((16,)).log_prob(states)[:, None] + model.likelihood.distribution(
        model.decoder(states)[:, None, :]
    ).log_prob(x)
    exact = torch.logsumexp(log_joint, dim=0)
    assert (elbo < exact).all()
    iwae = iwae_log_likelihood(model, guide, x, num_samples=2000)
    assert torch.allclose(iwae, exact, atol=0.05)


def test_sbn_trains_by_score_function_gradients():
    x = torch.bernoulli(torch.full((8, 12), 0.3))
    model = SBN(12, latent_dim=4, hidden_dims=(6,))
    guide = model.make_guide()
    loss = ScoreFunctionELBO(2, "leave-one-out").differentiable_loss(model, guide, x)
    grads = torch.autograd.grad(loss, [*model.parameters(), *guide.parameters()])
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert model.generate(3).shape == (3, 12)


def test_sbn_needs_binary_pixels():
    with pytest.raises(ValueError, match="likelihood: the SBN models binary pixels"):
        SBN(12, likelihood="gaussian")
