"""The README's convolutional VAE, written as a user would (tests/examples/conv_vae.py):
its networks take only ``(batch, ...)`` and run under vectorized particles through
``FoldLeadingDims``, with the same numbers as a loop over particles; the command line
trains and tests it from its file."""

import json
import math
from pathlib import Path

import pyro
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.evaluate import iwae_log_likelihood, log_importance_weights
from pyro_vae.spec import load_object

FILE = Path(__file__).with_name("conv_vae.py")
ConvVAE, Decoder = load_object(f"{FILE}:ConvVAE"), load_object(f"{FILE}:Decoder")


def test_the_users_decoder_alone_cannot_take_particles():
    decoder = Decoder(4, 3, (8, 8))
    assert decoder(torch.zeros(5, 4)).shape == (5, 1, 8, 8)
    with pytest.raises(RuntimeError):  # nn.Unflatten / ConvTranspose2d on [S, B, z_dim]
        decoder(torch.zeros(2, 5, 4))


def test_vectorized_particles_give_the_looped_numbers_on_the_same_draws():
    """B · z_dim = 16: torch's CPU normal sampler fills blocks of 16 from one stream, so the
    loop draws the vectorized draws, one particle after another."""
    torch.manual_seed(0)
    vae = ConvVAE((8, 8), z_dim=4, channels=3)
    x = torch.bernoulli(torch.rand(4, 64, generator=torch.Generator().manual_seed(0)))
    pyro.set_rng_seed(1)
    vectorized = log_importance_weights(vae.model, vae.guide, x, 8, vectorize_particles=True)
    pyro.set_rng_seed(1)
    looped = log_importance_weights(vae.model, vae.guide, x, 8, vectorize_particles=False)
    torch.testing.assert_close(vectorized, looped, rtol=1e-5, atol=1e-4)
    pyro.set_rng_seed(1)
    ll = iwae_log_likelihood(vae.model, vae.guide, x, 8, vectorize_particles=True)
    torch.testing.assert_close(ll, torch.logsumexp(vectorized, 0) - math.log(8))


def test_the_command_line_trains_and_evaluates_it_from_its_file(tmp_path):
    run = tmp_path / "conv"
    spec = f"{FILE}:ConvVAE"
    argv = ["fit", "--model", spec, "--model-opt", "channels=4", "--data", "digits"]
    fast = ["--epochs", "1", "--no-progress", "--ll-samples", "5", "--out", str(run)]
    assert main([*argv, *fast]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model_arguments"] == {"image_shape": [8, 8], "channels": 4}
    assert metrics["vectorized_particles"] is not False
    assert math.isfinite(metrics["test"]["log_likelihood"])
