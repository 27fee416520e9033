"""What the performance benchmarks share: the VAE's networks written three ways, the data,
the machine description, and a peak-memory probe.

The networks are those of Pyro's ``examples/vae/vae.py`` with the decoder returning logits:
encoder D-H-(L mean, L log-scale), decoder L-H-D, Softplus. ``wrap`` copies them into
``models.vae.VAE`` and its ``AmortizedNormal`` guide, so every contender is scored by the
one evaluator of ``pyro_vae.evaluate``. Building decoder then encoder from the same seed
gives exactly the initial weights ``VAE(...)`` and ``make_guide()`` get.
"""

from __future__ import annotations

import os
import platform
import resource
import threading
import time
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from models.vae import VAE
from pyro_vae.data import DataSplits, Preprocessing, load_data
from pyro_vae.datasets import FASHION_MNIST_DIR
from pyro_vae.guides import AmortizedNormal

HIDDEN, LATENT, BATCH_SIZE, LR = 400, 20, 128, 1e-3


class Encoder(nn.Module):
    """q(z | x) = N(loc, scale): D -> H (Softplus) -> L means and L log-scales."""

    def __init__(self, x_dim: int, z_dim: int = LATENT, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.fc1 = nn.Linear(x_dim, hidden)
        self.fc21 = nn.Linear(hidden, z_dim)
        self.fc22 = nn.Linear(hidden, z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.softplus(self.fc1(x))
        return self.fc21(h), torch.exp(self.fc22(h))


class Decoder(nn.Module):
    """p(x | z) = Bernoulli(logits): L -> H (Softplus) -> D logits."""

    def __init__(self, x_dim: int, z_dim: int = LATENT, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden)
        self.fc21 = nn.Linear(hidden, x_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc21(F.softplus(self.fc1(z)))


def build_networks(x_dim: int, seed: int) -> tuple[Encoder, Decoder]:
    """Seeded networks, decoder first, as ``VAE`` builds model then guide."""
    pyro.set_rng_seed(seed)
    decoder = Decoder(x_dim)
    return Encoder(x_dim), decoder


def hand_loss(encoder: Encoder, decoder: Decoder, x: torch.Tensor) -> torch.Tensor:
    """The hand-written negative ELBO of a batch: Bernoulli NLL + closed-form KL, summed."""
    loc, scale = encoder(x)
    z = loc + scale * torch.randn_like(loc)
    nll = F.binary_cross_entropy_with_logits(decoder(z), x, reduction="sum")
    kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1.0 - 2.0 * torch.log(scale)).sum()
    return nll + kl


def hand_loss_particles(
    encoder: Encoder, decoder: Decoder, x: torch.Tensor, k: int
) -> torch.Tensor:
    """The same with K reparameterized samples per image, averaged (vectorized)."""
    loc, scale = encoder(x)
    z = loc + scale * torch.randn((k, *loc.shape))
    logits = decoder(z)
    nll = F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="sum") / k
    kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1.0 - 2.0 * torch.log(scale)).sum()
    return nll + kl


class PlainPyroVAE(nn.Module):
    """Model and guide in the style of Pyro's examples/vae/vae.py (no subsample scaling).

    ``prefix`` keeps the parameter-store names of two instances in one process apart.
    """

    def __init__(self, encoder: Encoder, decoder: Decoder, prefix: str = "") -> None:
        super().__init__()
        self.encoder, self.decoder, self.prefix = encoder, decoder, prefix

    def model(self, x: torch.Tensor) -> None:
        pyro.module(f"{self.prefix}decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], LATENT)))
            z_scale = x.new_ones(torch.Size((x.shape[0], LATENT)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            pyro.sample("obs", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module(f"{self.prefix}encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


@torch.no_grad()
def wrap(encoder: Encoder, decoder: Decoder, log_scale_factor: float = 1.0):
    """A ``VAE`` and guide holding copies of the networks' weights (for the evaluator).

    ``log_scale_factor`` multiplies the log-scale head (0.5 for pythae's log-variance head).
    """
    model = VAE(decoder.fc21.out_features, latent_dim=LATENT, hidden_dims=(HIDDEN,))
    guide = model.make_guide()
    pairs = [
        (decoder.fc1, model.decoder[0], 1.0),
        (decoder.fc21, model.decoder[2], 1.0),
        (encoder.fc1, guide.trunk[0], 1.0),
        (encoder.fc21, guide.loc_head, 1.0),
        (encoder.fc22, guide.log_scale_head, log_scale_factor),
    ]
    for native, target, factor in pairs:
        target.weight.copy_(native.weight * factor)
        target.bias.copy_(native.bias * factor)
    return model, guide


def build_pyro_vae(x_dim: int, seed: int) -> tuple[VAE, AmortizedNormal]:
    """pyro_vae's own model and guide, seeded as :func:`build_networks` is."""
    pyro.set_rng_seed(seed)
    model = VAE(x_dim, latent_dim=LATENT, hidden_dims=(HIDDEN,))
    return model, model.make_guide()


def load(name: str, num_train: int | None = None) -> DataSplits:
    """Statically binarized images of ``name`` (no validation split), ``num_train`` kept."""
    data = load_data(name, Preprocessing("bernoulli", "static", 0.5), val_fraction=0.0)
    if num_train is not None:
        if num_train > data.train_x.shape[0]:
            raise ValueError(f"num_train: {num_train} > {data.train_x.shape[0]} images of {name}")
        data.train_x = data.train_x[:num_train].clone()
        data.train_y = data.train_y[:num_train].clone()
        data.info["num_train"] = num_train
    return data


def fashion_available() -> bool:
    return FASHION_MNIST_DIR.is_dir()


def set_threads(threads: int) -> None:
    """Fix torch's intra-op threads (the default races other processes on a shared box)."""
    torch.set_num_threads(threads)


def machine_lines() -> list[str]:
    """The machine and the library versions, as markdown list items."""
    try:
        import pythae

        pythae_version = getattr(pythae, "__version__", None) or _dist_version("pythae")
    except ImportError as err:
        pythae_version = f"not installed ({err})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return [
        f"- machine: {platform.platform()}, {cpu}, {os.cpu_count()} logical CPUs",
        f"- Python {platform.python_version()}, torch {torch.__version__}, pyro-ppl "
        f"{pyro.__version__}, pythae {pythae_version}",
    ]


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def max_rss_mb() -> float:
    """The process's peak resident set so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@dataclass
class PeakRSS:
    """Context manager: the largest resident set (MB) seen while it is open (polled)."""

    interval: float = 0.02
    peak: float = 0.0
    start: float = 0.0

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def timed(fn, *args) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - started, out
