"""Mean images from any model: reconstructions E[x | z = E_q z] and prior mean images, from
``decode``/``generate`` when the model has them and from its observation site otherwise.

The model throughout is linear-Gaussian, so every mean is known in closed form:
    z_n ~ N(0, I₂);  x_n | z_n ~ N(W z_n + b, I₃),   E[x | z] = W z + b.
"""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae.plates import data_plate
from pyro_vae.predictive import (
    NoMeanImageError,
    latent_interpolation,
    latent_traversal,
    observation_site,
    prior_mean_images,
    reconstruct,
)

W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, -1.0]])
B = torch.tensor([0.1, -0.2, 0.3])
X = torch.tensor([[0.5, -1.0, 0.2], [1.5, 0.3, -0.4], [-0.8, 0.9, 1.1], [0.0, 0.1, -2.0]])


def mean_of(z):
    return z @ W.T + B


def model(x, num_data=None):
    with data_plate(x, num_data):
        z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(mean_of(z), 1.0).to_event(1), obs=x)


def delta_guide(x, num_data=None):
    """q(z_n) = δ(z_n − x_n[:2]): every draw is its own mean."""
    with data_plate(x, num_data):
        pyro.sample("z", dist.Delta(x[:, :2]).to_event(1))


class EncoderGuide(nn.Module):
    """q(z_n) = N(x_n[:2], I) with its mean in closed form through ``encode``."""

    def encode(self, x):
        return dist.Normal(x[:, :2], 1.0)

    def forward(self, x, num_data=None):
        with data_plate(x, num_data):
            pyro.sample("z", self.encode(x).to_event(1))


class DecodingModel(nn.Module):
    """The same model with ``decode`` (through a dropout layer eval mode must switch off)
    and ``generate``."""

    def __init__(self):
        super().__init__()
        self.dropout = nn.Dropout(0.5)
        self.modes = []

    def decode(self, z):
        self.modes.append(self.training)
        return mean_of(self.dropout(z))

    def generate(self, num):
        self.modes.append(self.training)
        return torch.arange(4.0 * num).reshape(num, 2, 2)

    def forward(self, x, num_data=None):
        model(x, num_data)


def test_reconstruct_decodes_the_encoders_mean_in_eval_mode():
    decoding = DecodingModel()
    x_hat = reconstruct(decoding, EncoderGuide(), X)
    torch.testing.assert_close(x_hat, mean_of(X[:, :2]))
    assert decoding.modes == [False] and decoding.training  # dropout off, then restored


def test_without_decode_it_reads_the_observation_mean_at_the_guides_centre():
    x_hat = reconstruct(model, delta_guide, X)
    torch.testing.assert_close(x_hat, mean_of(X[:, :2]))


def test_images_observed_in_another_shape_come_back_flattened():
    images = X.reshape(4, 3, 1)

    def image_model(x, num_data=None):
        with data_plate(x, num_data):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(mean_of(z), 1.0).to_event(1), obs=x.reshape(-1, 3))

    def image_guide(x, num_data=None):
        delta_guide(x.reshape(-1, 3), num_data)

    torch.testing.assert_close(reconstruct(image_model, image_guide, images), mean_of(X[:, :2]))


def test_without_decode_a_guide_with_encode_is_centred_on_its_exact_mean():
    x_hat = reconstruct(model, EncoderGuide(), X)
    torch.testing.assert_close(x_hat, mean_of(X[:, :2]))


def test_observation_site_is_the_observed_site_holding_the_data():
    def two_observations(x):
        z = pyro.sample("z", dist.Normal(torch.zeros(4, 3), 1.0).to_event(2))
        pyro.sample("y", dist.Normal(z, 1.0).to_event(2), obs=x + 1)
        pyro.sample("pixels", dist.Normal(z.reshape(-1), 1.0).to_event(1), obs=x.reshape(-1))

    trace = pyro.poutine.trace(two_observations).get_trace(X)
    assert observation_site(trace, X) == "pixels"
    with pytest.raises(NoMeanImageError) as info:
        observation_site(trace, 2 * X)
    assert str(info.value) == (
        "model: none of its observed sites ['y', 'pixels'] holds the data x itself, so there "
        "is no E[x | z] to draw; give the model decode(z)"
    )
    assert isinstance(info.value, ValueError)
    # a latent the caller held at E_q z is observed in the trace, but is not data (tester F)
    held = pyro.poutine.trace(pyro.poutine.condition(two_observations, {"z": X})).get_trace(X)
    with pytest.raises(NoMeanImageError, match=r"observed sites \['y', 'pixels'\] holds"):
        observation_site(held, 2 * X, ("z",))


def test_an_observation_without_a_closed_form_mean_is_named():
    def log_normal_by_transform(x, num_data=None):
        with data_plate(x, num_data):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            base = dist.Normal(mean_of(z), 1.0)
            obs = dist.TransformedDistribution(base, [dist.transforms.ExpTransform()])
            pyro.sample("x", obs.to_event(1), obs=x)

    positive = X.exp()
    with pytest.raises(NoMeanImageError, match=r"observation 'x' \(Independent\) has no closed"):
        reconstruct(
            log_normal_by_transform, lambda x, num_data=None: delta_guide(x.log()), positive
        )
    with pytest.raises(NoMeanImageError, match="has no closed-form mean"):
        prior_mean_images(log_normal_by_transform, positive, 5)


def test_prior_mean_images_come_from_generate_in_eval_mode():
    decoding = DecodingModel()
    images = prior_mean_images(decoding, X, 3)
    torch.testing.assert_close(images, torch.arange(12.0).reshape(3, 4))
    assert decoding.modes == [False] and decoding.training


def test_without_generate_they_are_observation_means_at_prior_draws():
    # x_like only lends its shape: 3 rows of huge values, repeated for 2000 images
    images = prior_mean_images(model, torch.full((3, 3), 1e3), 2000)
    assert images.shape == (2000, 3)
    # means, not draws of x: the third pixel is exactly 2·first − second + const
    torch.testing.assert_close(
        images[:, 2] - B[2], 2 * (images[:, 0] - B[0]) - (images[:, 1] - B[1])
    )
    # the first two pixels are z + b with z ~ N(0, I): mean b, sd 1 (SE ≈ 0.02 and 0.016)
    torch.testing.assert_close(images[:, :2].mean(0), B[:2], atol=0.1, rtol=0)
    torch.testing.assert_close(images[:, :2].std(0), torch.ones(2), atol=0.1, rtol=0)


def test_without_generate_a_model_that_does_not_observe_x_is_refused():
    def observes_something_else(x, num_data=None):
        with data_plate(x, num_data):
            pyro.sample("x", dist.Normal(torch.zeros_like(x), 1.0).to_event(1), obs=2 * x)

    with pytest.raises(NoMeanImageError, match=r"none of its observed sites \['x'\] holds"):
        prior_mean_images(observes_something_else, X, 2)


def test_a_traversal_moves_the_most_varied_coordinate_over_its_percentile_range():
    decoding = DecodingModel()
    images, dims, values = latent_traversal(decoding, EncoderGuide(), X, num_dims=2, steps=5)
    codes = X[:, :2].numpy()  # EncoderGuide's E_q[z | x]
    assert dims.tolist() == list(np.argsort(-codes.var(0, ddof=1), kind="stable"))
    for r, d in enumerate(dims.tolist()):
        low, high = np.percentile(codes[:, d], [5, 95])
        # float32 arithmetic on values of order 1: within a few ulps (1e-7 each)
        np.testing.assert_allclose(values[r].numpy(), np.linspace(low, high, 5), atol=1e-6)
        for c in range(5):
            z = X[0, :2].clone()
            z[d] = values[r, c]
            torch.testing.assert_close(images[r, c], mean_of(z))
    assert images.shape == (2, 5, 3) and decoding.modes == [False]


def test_an_interpolation_runs_from_one_reconstruction_to_the_other():
    decoding, guide = DecodingModel(), EncoderGuide()
    images = latent_interpolation(decoding, guide, X[:2], X[2:], steps=3)
    torch.testing.assert_close(images[:, 0], reconstruct(decoding, guide, X[:2]))
    torch.testing.assert_close(images[:, -1], reconstruct(decoding, guide, X[2:]))
    torch.testing.assert_close(images[:, 1], mean_of((X[:2, :2] + X[2:, :2]) / 2))


def test_traversal_and_interpolation_need_decode_and_matching_rows():
    with pytest.raises(NoMeanImageError, match=r"offers no decode\(z\)"):
        latent_traversal(model, EncoderGuide(), X)
    with pytest.raises(ValueError, match="x_end: 1 rows; expected as many as x_start's 2"):
        latent_interpolation(DecodingModel(), EncoderGuide(), X[:2], X[:1])
    with pytest.raises(ValueError, match="x: 1 rows"):
        latent_traversal(DecodingModel(), EncoderGuide(), X[:1])


@pytest.mark.parametrize("which", ["x_start", "x_end"])
def test_an_interpolation_names_the_endpoint_whose_rows_are_refused(which):
    """Tester FJ: a NaN in ``x_end`` was refused as ``x``, an argument it does not have."""
    bad = X[2:].clone()
    bad[1, 0] = float("nan")
    ends = {"x_start": X[:2], "x_end": X[:2]} | {which: bad}
    with pytest.raises(ValueError, match=f"^{which}: 1 of its .* entries are NaN or infinite"):
        latent_interpolation(DecodingModel(), EncoderGuide(), ends["x_start"], ends["x_end"])
