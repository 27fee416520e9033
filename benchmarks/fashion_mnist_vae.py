"""Fashion-MNIST VAE: pyro_vae against a plain Pyro script and a hand-written PyTorch VAE.

Three ways of training the same variational autoencoder, on the same data with the same
settings, run one after the other in one process:

1. ``pyro_vae``: the package's public API (``load_data``, ``models.vae.VAE`` and its
   amortized guide, ``fit`` with the ``trace`` estimator, i.e. Pyro's ``Trace_ELBO``).
   Its minibatch loss is scaled by N/|B| (the data plate), its batches come from
   ``DataSplits.train_batches``.
2. ``plain Pyro``: a self-contained script in the style of Pyro's ``examples/vae/vae.py``:
   ``Encoder``/``Decoder`` ``nn.Module``s, ``model``/``guide`` methods registering them with
   ``pyro.module``, ``pyro.plate("data", len(x))`` without subsample scaling (the loss is
   summed over the batch), ``SVI`` with ``Trace_ELBO`` and ``pyro.optim.Adam``, batches
   from ``DataLoader(batch_size=128, shuffle=True)``. One deliberate departure from the
   example: the decoder returns logits and the likelihood is ``Bernoulli(logits=...)``,
   where the example passes ``sigmoid`` probabilities (which torch clamps to
   [eps, 1 − eps], so logits beyond about ±15.9 get no gradient), so that all three
   contenders optimize exactly the same objective.
3. ``hand-written PyTorch``: the same two networks without Pyro; loss = −(Bernoulli
   log-likelihood via ``binary_cross_entropy_with_logits``, summed) + analytic
   KL(q(z|x) ‖ N(0, I)), one reparameterized sample per image, ``torch.optim.Adam``, and
   the very same batches as contender 2 (identically seeded ``DataLoader``).

Shared settings: Fashion-MNIST statically binarized at 0.5 (pixel/255 > 0.5), all 60,000
training images, Bernoulli likelihood; encoder 784-400-(20 mean, 20 log-scale) and decoder
20-400-784, Softplus hidden activations, latent dimension 20; batch size 128, Adam with
learning rate 1e-3, ``--epochs`` epochs (default 5); torch's default thread count. All three
use the tensors of one ``load_data("fashion-mnist", ..., val_fraction=0.0)`` call and are
seeded with ``--seed`` before building their networks (decoder first, then encoder, the
order pyro_vae uses), so they start from identical weights; that is asserted. Each is
re-seeded before training and before evaluation.

Measurements:

- seconds per epoch: median over epochs of ``time.perf_counter`` around the training loop
  of one epoch (batch loading included, evaluation excluded; for pyro_vae this is the
  ``seconds`` that ``fit`` records), and its ratio to the hand-written PyTorch VAE;
- test ELBO: ``pyro_vae.evaluate.elbo_per_datapoint`` with 10 samples, mean over the 10,000
  test images (nats per image);
- log p(x): ``pyro_vae.evaluate.iwae_log_likelihood`` with K = 1,000 importance samples,
  mean over the first 1,000 test images.

All three are scored by that one evaluator: the trained weights of contenders 2 and 3 are
copied into a ``models.vae.VAE`` (``decoder`` Sequential) and its ``AmortizedNormal`` guide
(``trunk``, ``loc_head``, ``log_scale_head``; scale = exp(log_scale_head(h)), as in the
example's encoder). Before and after training the script asserts that the copy scores
what the native code computes: at the same codes z = μ + σ ε, the evaluator's log importance
weight log p(x, z) − log q(z | x) matches the plain Pyro model/guide traces and the
hand-written log-likelihood and densities, and the hand-written loss (closed-form KL)
matches the wrapped likelihood minus ``torch.distributions.kl_divergence`` of the wrapped
guide.

Run from the repository root::

    .venv/bin/python benchmarks/fashion_mnist_vae.py --epochs 5

The markdown table goes to ``benchmarks/fashion_mnist_vae.md`` (``--output``) and stdout.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.optim
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from report_common import load_average, output_file
from torch import nn
from torch.distributions import Normal, kl_divergence
from torch.utils.data import DataLoader, TensorDataset

from models.vae import VAE
from pyro_vae.data import DataSplits, Preprocessing, load_data
from pyro_vae.estimators import get
from pyro_vae.evaluate import elbo_per_datapoint, iwae_log_likelihood, log_importance_weights
from pyro_vae.guides import AmortizedNormal
from pyro_vae.train import TrainConfig, fit

X_DIM, HIDDEN, LATENT = 784, 400, 20
BATCH_SIZE, LR, THRESHOLD = 128, 1e-3, 0.5
ELBO_SAMPLES, IWAE_SAMPLES, IWAE_IMAGES = 10, 1000, 1000
DEFAULT_OUTPUT = Path(__file__).with_suffix(".md")


# --- contenders 2 and 3: the networks of Pyro's examples/vae/vae.py --------------------


class Encoder(nn.Module):
    """q(z | x) = N(loc, scale): 784 -> 400 (Softplus) -> 20 means and 20 log-scales."""

    def __init__(self, z_dim: int = LATENT, hidden_dim: int = HIDDEN) -> None:
        super().__init__()
        self.fc1 = nn.Linear(X_DIM, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.softplus(self.fc1(x.reshape(-1, X_DIM)))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class Decoder(nn.Module):
    """p(x | z) = Bernoulli(logits): 20 -> 400 (Softplus) -> 784 logits."""

    def __init__(self, z_dim: int = LATENT, hidden_dim: int = HIDDEN) -> None:
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, X_DIM)
        self.softplus = nn.Softplus()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc21(self.softplus(self.fc1(z)))


def build_networks(seed: int) -> tuple[Encoder, Decoder]:
    """Seeded networks; the decoder is built first, as pyro_vae builds model then guide."""
    pyro.set_rng_seed(seed)
    decoder = Decoder()
    encoder = Encoder()
    return encoder, decoder


class PlainPyroVAE(nn.Module):
    """Contender 2: model and guide as in Pyro's VAE example (no subsample scaling)."""

    def __init__(self, encoder: Encoder, decoder: Decoder) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], LATENT)))
            z_scale = x.new_ones(torch.Size((x.shape[0], LATENT)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            logits = self.decoder(z)
            pyro.sample(
                "obs",
                dist.Bernoulli(logits=logits, validate_args=False).to_event(1),
                obs=x.reshape(-1, X_DIM),
            )

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))

    def log_weights(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x, z) − log q(z | x) per image at codes ``z``, from this model's traces."""

        def log_density(fn: Callable[[torch.Tensor], None]) -> torch.Tensor:
            trace = poutine.trace(poutine.condition(fn, data={"latent": z})).get_trace(x)
            trace.compute_log_prob()
            sites = [s for s in trace.nodes.values() if s["type"] == "sample"]
            return sum(site["log_prob"] for site in sites)

        return log_density(self.model) - log_density(self.guide)


def hand_elbo_terms(
    encoder: Encoder, decoder: Decoder, x: torch.Tensor, eps: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Contender 3's objective per image: (log p(x | z), KL(q(z|x) ‖ N(0, I)), z)."""
    loc, scale = encoder(x)
    if eps is None:
        eps = torch.randn_like(loc)
    z = loc + scale * eps
    log_lik = -F.binary_cross_entropy_with_logits(decoder(z), x, reduction="none").sum(-1)
    kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1.0 - 2.0 * torch.log(scale)).sum(-1)
    return log_lik, kl, z


# --- pyro_vae objects and the weight copy ---------------------------------------------


def build_pyro_vae(seed: int) -> tuple[VAE, AmortizedNormal]:
    """Contender 1's model and guide, seeded as the others' networks are."""
    pyro.set_rng_seed(seed)
    model = VAE(X_DIM, latent_dim=LATENT, hidden_dims=(HIDDEN,))
    return model, model.make_guide()


def layer_pairs(
    encoder: Encoder, decoder: Decoder, model: VAE, guide: AmortizedNormal
) -> list[tuple[nn.Linear, nn.Linear]]:
    """(native layer, pyro_vae layer) for every Linear layer of the VAE."""
    return [
        (decoder.fc1, model.decoder[0]),
        (decoder.fc21, model.decoder[2]),
        (encoder.fc1, guide.trunk[0]),
        (encoder.fc21, guide.loc_head),
        (encoder.fc22, guide.log_scale_head),
    ]


@torch.no_grad()
def wrap(encoder: Encoder, decoder: Decoder) -> tuple[VAE, AmortizedNormal]:
    """A pyro_vae model and guide holding copies of the native networks' weights."""
    model = VAE(X_DIM, latent_dim=LATENT, hidden_dims=(HIDDEN,))
    guide = model.make_guide()
    for native, target in layer_pairs(encoder, decoder, model, guide):
        target.weight.copy_(native.weight)
        target.bias.copy_(native.bias)
    return model, guide


@torch.no_grad()
def check_wrapped(
    encoder: Encoder,
    decoder: Decoder,
    x: torch.Tensor,
    seed: int,
    plain: PlainPyroVAE | None = None,
) -> float:
    """Assert that the wrapped copy scores what the native code computes; the largest gap.

    At codes z = μ(x) + σ(x) ε from the native encoder (ε seeded), compares the evaluator's
    log importance weights of the wrapped model/guide with the native ones (through the
    plain Pyro traces when ``plain`` is given, through the hand-written densities always),
    and the hand-written loss (closed-form KL) with the wrapped likelihood minus
    ``torch.distributions.kl_divergence`` of the wrapped guide.
    """
    model, guide = wrap(encoder, decoder)
    eps = torch.randn(x.shape[0], LATENT, generator=torch.Generator().manual_seed(seed))
    loc, scale = encoder(x)
    log_lik, kl, z = hand_elbo_terms(encoder, decoder, x, eps)

    wrapped_log_w = log_importance_weights(
        poutine.condition(model, data={"z": z}),
        poutine.condition(guide, data={"z": z}),
        x,
        num_samples=1,
        nesting=1,
    )[0]
    prior = Normal(torch.zeros_like(loc), torch.ones_like(scale))
    native = {
        "hand-written log w": log_lik
        + prior.log_prob(z).sum(-1)
        - Normal(loc, scale).log_prob(z).sum(-1)
    }
    if plain is not None:
        native["plain Pyro log w"] = plain.log_weights(x, z)
    wrapped_analytic = model.likelihood.distribution(model.decoder(z)).log_prob(x) - (
        kl_divergence(guide.encode(x), prior).sum(-1)
    )

    gaps = []
    for label, expected in native.items():
        torch.testing.assert_close(wrapped_log_w, expected, rtol=1e-5, atol=1e-3, msg=label)
        gaps.append((wrapped_log_w - expected).abs().max().item())
    torch.testing.assert_close(
        wrapped_analytic, log_lik - kl, rtol=1e-5, atol=1e-3, msg="closed-form KL ELBO"
    )
    gaps.append((wrapped_analytic - (log_lik - kl)).abs().max().item())
    return max(gaps)


def assert_same_init(encoder: Encoder, decoder: Decoder, seed: int) -> None:
    """The native networks start from exactly the weights pyro_vae's model/guide get."""
    model, guide = build_pyro_vae(seed)
    for native, target in layer_pairs(encoder, decoder, model, guide):
        assert torch.equal(native.weight, target.weight), "initial weights differ"
        assert torch.equal(native.bias, target.bias), "initial biases differ"


# --- running and scoring ----------------------------------------------------------------


@dataclass
class Result:
    name: str
    seconds: list[float]
    train_elbo: list[float]
    test_elbo: float
    log_px: float
    eval_seconds: float
    check_gap: str

    @property
    def seconds_per_epoch(self) -> float:
        return statistics.median(self.seconds)


def evaluate(model: VAE, guide: AmortizedNormal, test_x: torch.Tensor, seed: int) -> dict:
    """Test ELBO (10 samples) and IWAE log p(x) (K=1000, first 1000 images), nats/image."""
    started = time.perf_counter()
    pyro.set_rng_seed(seed)
    test_elbo = elbo_per_datapoint(model, guide, test_x, num_samples=ELBO_SAMPLES).mean()
    log_px = iwae_log_likelihood(
        model, guide, test_x[:IWAE_IMAGES], num_samples=IWAE_SAMPLES
    ).mean()
    return {
        "test_elbo": test_elbo.item(),
        "log_px": log_px.item(),
        "eval_seconds": time.perf_counter() - started,
    }


def make_loader(train_x: torch.Tensor, seed: int) -> DataLoader:
    """Contenders 2 and 3's shuffled batches: one seeded generator each, so identical."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        TensorDataset(train_x), batch_size=BATCH_SIZE, shuffle=True, generator=generator
    )


def run_pyro_vae(data: DataSplits, epochs: int, seed: int) -> Result:
    model, guide = build_pyro_vae(seed)
    config = TrainConfig(
        epochs=epochs, batch_size=BATCH_SIZE, lr=LR, seed=seed, patience=None, progress=False
    )
    history = fit(model, guide, data, get("trace"), config).history
    for h in history:
        print(f"  pyro_vae epoch {h['epoch']}: ELBO {h['train_elbo']:.3f} ({h['seconds']:.1f} s)")
    return Result(
        name="pyro_vae",
        seconds=[h["seconds"] for h in history],
        train_elbo=[h["train_elbo"] for h in history],
        check_gap="native (no copy)",
        **evaluate(model, guide, data.test_x, seed),
    )


def run_plain_pyro(data: DataSplits, epochs: int, seed: int) -> Result:
    encoder, decoder = build_networks(seed)
    vae = PlainPyroVAE(encoder, decoder)
    assert_same_init(encoder, decoder, seed)
    probe = data.train_x[:BATCH_SIZE]
    gap_before = check_wrapped(encoder, decoder, probe, seed, plain=vae)

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": LR}), loss=Trace_ELBO())
    loader = make_loader(data.train_x, seed)
    seconds, train_elbo = [], []
    for _ in range(epochs):
        started = time.perf_counter()
        epoch_loss = 0.0
        for (x,) in loader:
            epoch_loss += svi.step(x)
        seconds.append(time.perf_counter() - started)
        train_elbo.append(-epoch_loss / len(loader.dataset))
        print(f"  plain Pyro epoch {len(seconds)}: ELBO {train_elbo[-1]:.3f} ({seconds[-1]:.1f} s)")

    gap_after = check_wrapped(encoder, decoder, probe, seed, plain=vae)
    model, guide = wrap(encoder, decoder)
    return Result(
        name="plain Pyro (examples/vae style)",
        seconds=seconds,
        train_elbo=train_elbo,
        check_gap=f"{gap_before:.1e} / {gap_after:.1e}",
        **evaluate(model, guide, data.test_x, seed),
    )


def run_pytorch(data: DataSplits, epochs: int, seed: int) -> Result:
    encoder, decoder = build_networks(seed)
    assert_same_init(encoder, decoder, seed)
    probe = data.train_x[:BATCH_SIZE]
    gap_before = check_wrapped(encoder, decoder, probe, seed)

    pyro.set_rng_seed(seed)
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=LR)
    loader = make_loader(data.train_x, seed)
    seconds, train_elbo = [], []
    for _ in range(epochs):
        started = time.perf_counter()
        epoch_loss = 0.0
        for (x,) in loader:
            log_lik, kl, _ = hand_elbo_terms(encoder, decoder, x)
            loss = (kl - log_lik).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item()
        seconds.append(time.perf_counter() - started)
        train_elbo.append(-epoch_loss / len(loader.dataset))
        print(f"  PyTorch epoch {len(seconds)}: ELBO {train_elbo[-1]:.3f} ({seconds[-1]:.1f} s)")

    gap_after = check_wrapped(encoder, decoder, probe, seed)
    model, guide = wrap(encoder, decoder)
    return Result(
        name="hand-written PyTorch",
        seconds=seconds,
        train_elbo=train_elbo,
        check_gap=f"{gap_before:.1e} / {gap_after:.1e}",
        **evaluate(model, guide, data.test_x, seed),
    )


def loader_seconds(batches: Callable[[], Iterable], repeats: int = 3) -> float:
    """Median seconds to iterate one epoch of batches without training."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _batch in batches():
            pass
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# --- report ------------------------------------------------------------------------------


def machine_info(load_before: str) -> list[str]:
    return [
        f"- platform: {platform.platform()} ({platform.machine()}), "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs",
        f"- torch {torch.__version__}, pyro-ppl {pyro.__version__}, "
        f"torch.get_num_threads() = {torch.get_num_threads()}",
        f"- load average (1, 5, 15 min) before the run: {load_before}; after: {load_average()}",
    ]


def render(
    results: list[Result],
    args: argparse.Namespace,
    data: DataSplits,
    loaders: dict,
    load_before: str,
) -> str:
    base = next(r for r in results if r.name == "hand-written PyTorch").seconds_per_epoch
    lines = [
        "# Fashion-MNIST VAE: pyro_vae vs. plain Pyro vs. hand-written PyTorch",
        "",
        "Generated by `benchmarks/fashion_mnist_vae.py` (see its docstring for what is "
        "compared and how).",
        "",
        "## Machine",
        "",
        *machine_info(load_before),
        "",
        "## Settings (identical for all three)",
        "",
        f"- data: Fashion-MNIST, static binarization (pixel/255 > {THRESHOLD}), "
        f"{data.train_x.shape[0]:,} training images, {data.test_x.shape[0]:,} test images "
        "(`load_data(..., val_fraction=0.0)`)",
        f"- model: Bernoulli likelihood, latent dim {LATENT}; encoder {X_DIM}-{HIDDEN}-"
        f"({LATENT} mean, {LATENT} log-scale), decoder {LATENT}-{HIDDEN}-{X_DIM}, Softplus; "
        "identical initial weights",
        f"- training: batch size {BATCH_SIZE}, Adam lr {LR:g}, {args.epochs} epochs, "
        f"seed {args.seed}; one sample of z per image (pyro_vae and plain Pyro: Trace_ELBO, "
        "Monte Carlo KL; PyTorch: closed-form KL)",
        f"- test ELBO: `elbo_per_datapoint(..., num_samples={ELBO_SAMPLES})`, mean over all "
        "test images",
        f"- log p(x): `iwae_log_likelihood(..., num_samples={IWAE_SAMPLES})`, mean over the "
        f"first {IWAE_IMAGES:,} test images",
        "- s/epoch: median over epochs of the wall time of one epoch's training loop "
        "(batch loading included)",
        "",
        "## Results",
        "",
        "| contender | s/epoch | ratio to hand-written PyTorch | test ELBO (nats) "
        f"| log p(x) (IWAE K={IWAE_SAMPLES}, {IWAE_IMAGES} images) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.seconds_per_epoch:.2f} | {r.seconds_per_epoch / base:.2f} "
            f"| {r.test_elbo:.2f} | {r.log_px:.2f} |"
        )
    lines += [
        "",
        "## Details",
        "",
        "| contender | seconds per epoch | fastest epoch s (ratio) | final train ELBO "
        "(epoch mean) | evaluation s | copy check: max gap before / after training (nats) |",
        "|---|---|---:|---:|---:|---|",
    ]
    fastest = min(next(r for r in results if r.name == "hand-written PyTorch").seconds)
    for r in results:
        per_epoch = ", ".join(f"{s:.1f}" for s in r.seconds)
        lines.append(
            f"| {r.name} | {per_epoch} | {min(r.seconds):.2f} ({min(r.seconds) / fastest:.2f}) "
            f"| {r.train_elbo[-1]:.2f} | {r.eval_seconds:.0f} | {r.check_gap} |"
        )
    lines += [
        "",
        "Batch loading alone, one epoch without training (median of 3): "
        + "; ".join(f"{name} {sec:.2f} s" for name, sec in loaders.items())
        + ".",
        "",
        "Timings are wall-clock seconds on whatever else the machine was running; compare the "
        "load averages above with the core count, and the per-epoch seconds across epochs, "
        "before trusting the ratios. Other processes only ever slow an epoch down, so on a "
        "shared machine the fastest epoch is the steadier estimate of each contender's speed.",
        "",
        "Each accuracy number is one seed's final iterate. After a few epochs at lr 1e-3 the "
        "test ELBO still moves by several tenths of a nat from one Adam step to the next, and "
        "runs that differ only in batch order or sampling noise end up apart by as much, so "
        "differences between contenders below about 1 nat are not evidence of a difference "
        "in method; rerun with other `--seed`s to see the spread.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="training epochs (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every contender")
    parser.add_argument("--output", type=output_file, default=DEFAULT_OUTPUT, help="markdown file")
    args = parser.parse_args(argv)
    load_before = load_average()

    preprocessing = Preprocessing("bernoulli", "static", THRESHOLD)
    data = load_data("fashion-mnist", preprocessing, val_fraction=0.0)
    assert data.train_x.shape == (60_000, X_DIM) and data.test_x.shape == (10_000, X_DIM)
    loaders = {
        "pyro_vae `train_batches`": loader_seconds(
            lambda: data.train_batches(BATCH_SIZE, 0, args.seed)
        ),
        "`DataLoader(TensorDataset)`": loader_seconds(lambda: make_loader(data.train_x, args.seed)),
    }

    results = []
    for label, run in (
        ("pyro_vae", run_pyro_vae),
        ("plain Pyro", run_plain_pyro),
        ("hand-written PyTorch", run_pytorch),
    ):
        print(f"training {label} for {args.epochs} epochs ...", flush=True)
        result = run(data, args.epochs, args.seed)
        print(
            f"  {label}: {result.seconds_per_epoch:.2f} s/epoch, test ELBO "
            f"{result.test_elbo:.3f}, log p(x) {result.log_px:.3f}",
            flush=True,
        )
        results.append(result)

    report = render(results, args, data, loaders, load_before)
    args.output.write_text(report)
    print()
    print(report)


if __name__ == "__main__":
    main()
