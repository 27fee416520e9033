"""The shared prior-and-decoder model: its sites, densities, means and declarations, on a
small subclass with a Laplace prior (so nothing here leans on the VAE's choices)."""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch import nn

from models.latent_decoder import LatentDecoderModel
from pyro_vae.estimators.compiled import should_record
from pyro_vae.likelihoods import Bernoulli, Gaussian
from pyro_vae.plates import data_plate


class LaplaceDecoder(LatentDecoderModel):
    """z ~ Laplace(0, 1)^J, x | z ~ the likelihood of decoder(z)."""

    def prior(self, batch_shape=()):
        zeros = torch.zeros(*batch_shape, self.latent_dim)
        return dist.Laplace(zeros, torch.ones_like(zeros)).to_event(1)


def small(likelihood="bernoulli", **kwargs):
    return LaplaceDecoder(6, 2, kwargs.pop("hidden", [5]), likelihood, None, "tanh", **kwargs)


def guide(x, num_data=None):
    with data_plate(x, num_data):
        pyro.sample("z", dist.Normal(torch.zeros(len(x), 2), 1.0).to_event(1))


def test_it_stores_its_sizes_and_builds_the_decoder_for_its_likelihood():
    model = LaplaceDecoder(6, 2, [5, 4.0], "gaussian", None, "relu")
    assert (model.x_dim, model.latent_dim, model.hidden_dims) == (6, 2, (5, 4))
    assert isinstance(model.likelihood, Gaussian) and model.activation == "relu"
    linear = [(m.in_features, m.out_features) for m in model.decoder if isinstance(m, nn.Linear)]
    assert linear == [(2, 5), (5, 4), (4, 12)]  # a Gaussian reads a mean and a scale per pixel
    assert isinstance(model.decoder[1], nn.ReLU)


def test_the_joint_density_is_prior_plus_likelihood_by_hand():
    model = small()
    x = torch.bernoulli(torch.full((4, 6), 0.5))
    guide_tr = poutine.trace(guide).get_trace(x, num_data=12)
    trace = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x, num_data=12)
    trace.compute_log_prob()
    z = guide_tr.nodes["z"]["value"]
    assert trace.nodes["z"]["value"] is z and trace.nodes["x"]["is_observed"]
    for name in ("z", "x"):
        site = trace.nodes[name]
        assert [f.name for f in site["cond_indep_stack"]] == ["data"] and site["scale"] == 3.0
    logits = model.decoder(z)
    # torch's own Bernoulli summed over pixels; Laplace(0, 1) by hand: −|z| − log 2 per unit
    torch.testing.assert_close(
        trace.nodes["x"]["unscaled_log_prob"], dist.Bernoulli(logits=logits).log_prob(x).sum(-1)
    )
    torch.testing.assert_close(
        trace.nodes["z"]["unscaled_log_prob"], -z.abs().sum(-1) - 2 * math.log(2)
    )


def test_decode_is_the_likelihood_mean_of_the_decoder_output():
    model = small()
    z = torch.randn(3, 2)
    torch.testing.assert_close(model.decode(z), torch.sigmoid(model.decoder(z)))
    gaussian = small("gaussian")
    torch.testing.assert_close(gaussian.decode(z), torch.sigmoid(gaussian.decoder(z)[:, :6]))


def test_generate_decodes_draws_from_the_prior():
    model = small()
    pyro.set_rng_seed(5)
    images = model.generate(7)
    pyro.set_rng_seed(5)
    z = dist.Laplace(torch.zeros(7, 2), torch.ones(7, 2)).sample()
    assert images.shape == (7, 6)
    torch.testing.assert_close(images, torch.sigmoid(model.decoder(z)))


def test_it_trains_by_svi_with_any_guide():
    model = small()
    x = torch.bernoulli(torch.full((4, 6), 0.5))
    loss = Trace_ELBO().differentiable_loss(model, guide, x)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())


def test_the_prior_is_for_subclasses_to_say():
    model = LatentDecoderModel(6, 2, (), "bernoulli", None, "tanh")
    with pytest.raises(NotImplementedError):
        model.prior((3,))
    assert isinstance(model.likelihood, Bernoulli) and model.generative is True


def test_images_of_other_than_x_dim_pixels_are_refused_when_the_model_is_built():
    """Tester CV: 64 values on 4x4 images (16 pixels) built, and were refused only at the
    guide's first call; CVAE and M2 refused them at construction."""
    with pytest.raises(ValueError, match=r"image_shape: \(4, 4\) has 16 pixels, but x_dim is 64"):
        LaplaceDecoder(64, 2, (), "bernoulli", None, "elu", "conv", (4, 4), (8,))
    assert LaplaceDecoder(64, 2, (), "bernoulli", None, "elu", "conv", (8, 8), (8,)).x_dim == 64
    # an MLP draws its rows as images of that shape too (tester CW)
    with pytest.raises(ValueError, match=r"image_shape: \(4, 4\) has 16 pixels, but x_dim is 64"):
        LaplaceDecoder(64, 2, (), "bernoulli", None, "tanh", "mlp", (4, 4))


@pytest.mark.parametrize("latent_dim", [0, -3])
def test_a_latent_dim_below_one_is_refused(latent_dim):
    with pytest.raises(ValueError) as info:
        LaplaceDecoder(6, latent_dim, (), "bernoulli", None, "tanh")
    assert str(info.value) == f"latent_dim: {latent_dim} is not a positive integer"


def test_a_subclass_is_recordable_only_when_it_says_so_itself():
    class Declared(LaplaceDecoder):
        recordable = True

    def declared_guide(x, num_data=None):
        guide(x, num_data)

    declared_guide.recordable = True
    assert vars(LatentDecoderModel)["recordable"] is True
    assert "does not declare recordable" in should_record(Trace_ELBO(), small(), declared_guide)
    assert (
        should_record(Trace_ELBO(), Declared(6, 2, (), "bernoulli", None, "tanh"), declared_guide)
        is None
    )
