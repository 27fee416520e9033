"""A VAE written the way Pyro's examples write one (examples/vae/vae.py): a class with
``model`` and ``guide`` methods, ``pyro.module`` for the networks, ``pyro.plate("data",
x.shape[0])``, no ``num_data``, no ``decode``/``encode``/``generate``. Nothing in it knows
about pyro_vae; the tests train, evaluate, sample and diagnose it through ``fit`` and the
command line exactly as it is. The same model as plain functions is below the class."""

import pyro
import pyro.distributions as dist
import torch
from pyro_style_layers import Decoder, Encoder
from torch import nn


class PyroStyleVAE(nn.Module):
    def __init__(self, x_dim=784, z_dim=50, hidden_dim=400):
        super().__init__()
        self.encoder = Encoder(x_dim, z_dim, hidden_dim)
        self.decoder = Decoder(x_dim, z_dim, hidden_dim)
        self.x_dim, self.z_dim = x_dim, z_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample(
                "obs",
                dist.Bernoulli(loc_img, validate_args=False).to_event(1),
                obs=x.reshape(-1, self.x_dim),
            )

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


# The same model as plain functions, for `--model file.py:model --guide file.py:guide`.
# Sized for scikit-learn's 8x8 digits.
torch.manual_seed(0)
encoder = Encoder(64, 4, 32)
decoder = Decoder(64, 4, 32)


def model(x):
    pyro.module("decoder", decoder)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample(
            "latent", dist.Normal(x.new_zeros(4), 1.0).expand([x.shape[0], 4]).to_event(1)
        )
        pyro.sample("obs", dist.Bernoulli(decoder(z), validate_args=False).to_event(1), obs=x)


def guide(x):
    pyro.module("encoder", encoder)
    with pyro.plate("data", x.shape[0]):
        z_loc, z_scale = encoder(x)
        pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
