import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO

from models.autoencoder import Autoencoder


def test_loss_is_the_negative_reconstruction_log_likelihood():
    model = Autoencoder(10, latent_dim=2, hidden_dims=(8,), noise_std=0.0)
    x = torch.bernoulli(torch.full((5, 10), 0.5))
    loss = Trace_ELBO().loss(model, model.make_guide(), x)
    h = model.decoder(model.encode(x))
    expected = -model.likelihood.distribution(h).log_prob(x).sum()
    assert loss == pytest.approx(expected.item(), rel=1e-6)


def test_code_is_corrupted_only_while_training():
    model = Autoencoder(10, latent_dim=2, hidden_dims=(8,), noise_std=1.0)
    x = torch.bernoulli(torch.full((5, 10), 0.5))

    def logits(m):
        return poutine.trace(m).get_trace(x).nodes["x"]["fn"].base_dist.logits

    assert not torch.allclose(logits(model), logits(model))
    model.eval()
    torch.testing.assert_close(logits(model), logits(model))


def test_negative_noise_is_rejected():
    with pytest.raises(ValueError, match="noise_std: -0.1"):
        Autoencoder(10, noise_std=-0.1)


@pytest.mark.parametrize("latent_dim", [0, -1])
def test_a_code_of_no_units_is_refused_as_the_vae_refuses_it(latent_dim):
    """Tester CM: 0 trained a code of no units, -1 failed in torch."""
    with pytest.raises(ValueError, match=f"latent_dim: {latent_dim} is not a positive integer"):
        Autoencoder(10, latent_dim=latent_dim)


def test_a_conv_autoencoder_encodes_and_decodes_images():
    torch.manual_seed(0)
    model = Autoencoder(
        64, 3, (8,), noise_std=0.0, arch="conv", image_shape=(8, 8), channels=(2, 4)
    )
    x = torch.bernoulli(torch.full((5, 64), 0.5))
    assert model.encode(x).shape == (5, 3) and model.decode(model.encode(x)).shape == (5, 64)
    loss = Trace_ELBO().loss(model, model.make_guide(), x)
    expected = -model.likelihood.distribution(model.decoder(model.encode(x))).log_prob(x).sum()
    assert loss == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="image_shape: None; arch='conv' needs"):
        Autoencoder(64, arch="conv")
