"""A convolutional VAE written as a user writes one, in the shape of Pyro's VAE example
(examples/vae/vae.py): ``model`` and ``guide`` methods, ``pyro.module``, ``pyro.plate``.
Its networks take ``(batch, C, H, W)`` and ``(batch, z_dim)`` only, as convolutional
networks do; :class:`pyro_vae.nn.FoldLeadingDims` lets them run on the extra leading
dimensions of vectorized particles and the evaluators (``[S, B, z_dim]``), and on the
flattened images ``[B, H·W]`` the data come as. This is the README's "Writing your own
model" example; ``pyro-vae fit`` passes the data's ``image_shape`` because the constructor
takes one."""

import pyro
import pyro.distributions as dist
from torch import nn

from pyro_vae.nn import FoldLeadingDims


class Encoder(nn.Module):
    """(batch, 1, H, W) -> (loc, scale), each (batch, z_dim)."""

    def __init__(self, z_dim, channels, image_shape):
        super().__init__()
        h, w = image_shape
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten()
        )
        self.loc = nn.Linear(channels * (h // 2) * (w // 2), z_dim)
        self.log_scale = nn.Linear(channels * (h // 2) * (w // 2), z_dim)

    def forward(self, x):
        h = self.features(x)
        return self.loc(h), self.log_scale(h).exp()


class Decoder(nn.Module):
    """(batch, z_dim) -> Bernoulli logits (batch, 1, H, W)."""

    def __init__(self, z_dim, channels, image_shape):
        super().__init__()
        h, w = image_shape
        self.net = nn.Sequential(
            nn.Linear(z_dim, channels * (h // 2) * (w // 2)),
            nn.ReLU(),
            nn.Unflatten(1, (channels, h // 2, w // 2)),
            nn.ConvTranspose2d(channels, 1, 4, stride=2, padding=1),
        )

    def forward(self, z):
        return self.net(z)


class ConvVAE(nn.Module):
    def __init__(self, image_shape=(28, 28), z_dim=4, channels=8):
        super().__init__()
        h, w = image_shape
        self.z_dim = z_dim
        self.encoder = FoldLeadingDims(Encoder(z_dim, channels, image_shape), (1, h, w))
        self.decoder = FoldLeadingDims(Decoder(z_dim, channels, image_shape), (z_dim,))

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(x.new_zeros(self.z_dim), 1.0).expand([x.shape[0], self.z_dim])
            z = pyro.sample("latent", prior.to_event(1))
            logits = self.decoder(z).flatten(-3)  # [..., B, 1, H, W] -> [..., B, H·W]
            pyro.sample("obs", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)  # x: [B, H·W], flattened
            pyro.sample("latent", dist.Normal(loc, scale).to_event(1))
