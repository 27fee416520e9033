"""Epochs and quality: one contender trained in its own process, timed, then scored.

``python benchmarks/perf_epoch.py --contender NAME --json OUT ...`` trains one of

- ``pyro_vae``: ``fit`` with the ``trace`` estimator (Pyro's ``Trace_ELBO``), recorded
  (``compile=True``, as the CLI trains by default);
- ``pyro_vae-uncompiled``: the same with ``compile=False``;
- ``pyro_vae-inductor``: the same with ``compile_backend="inductor"`` (its first epoch
  includes the compilation, tens of seconds per batch shape);
- ``plain-pyro``: a script in the style of Pyro's ``examples/vae/vae.py`` (``SVI``,
  ``Trace_ELBO``, ``pyro.optim.Adam``, ``DataLoader(TensorDataset)``);
- ``pytorch``: the hand-written VAE (closed-form KL, ``torch.optim.Adam``, same loader);
- ``pythae``: ``pythae.models.VAE`` with its ``BaseTrainer`` (its loss is the batch mean
  with closed-form KL; its encoder's second head is a log-variance, its decoder ends in a
  sigmoid for its ``bce`` loss: the same functions of the same weights);

from the same initial weights, on the same statically binarized images, batch 128, Adam
1e-3, and writes JSON: seconds per epoch, the process's peak RSS, the peak RSS while
training (polled) and at its start, and, unless ``--no-eval``, the test ELBO
(``elbo_per_datapoint``, 10 samples, all test images) and log p(x) (``iwae_log_likelihood``
with K = ``--iwae-samples``, the first ``--eval-images`` test images) of the weights copied
into ``models.vae.VAE``. One process per contender keeps the memory peaks apart.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import pyro
import pyro.optim
import torch
from perf_common import (
    BATCH_SIZE,
    LATENT,
    LR,
    PeakRSS,
    PlainPyroVAE,
    build_networks,
    build_pyro_vae,
    hand_loss,
    load,
    max_rss_mb,
    set_threads,
    wrap,
)
from pyro.infer import SVI, Trace_ELBO
from report_common import output_file
from torch.utils.data import DataLoader, TensorDataset

from pyro_vae.estimators import get
from pyro_vae.evaluate import elbo_per_datapoint, iwae_log_likelihood
from pyro_vae.train import TrainConfig, fit

CONTENDERS = (
    "pyro_vae",
    "pyro_vae-uncompiled",
    "pyro_vae-inductor",
    "plain-pyro",
    "pytorch",
    "pythae",
)


def _loader(train_x: torch.Tensor, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        TensorDataset(train_x), batch_size=BATCH_SIZE, shuffle=True, generator=generator
    )


def train_pyro_vae(
    data, epochs: int, seed: int, compile: bool = True, backend=None, device: str = "cpu"
):
    model, guide = build_pyro_vae(data.x_dim, seed)
    config = TrainConfig(
        epochs=epochs,
        batch_size=BATCH_SIZE,
        lr=LR,
        seed=seed,
        patience=None,
        progress=False,
        compile=compile,
        compile_backend=backend,
        device=device,
    )
    history = fit(model, guide, data, get("trace"), config).history
    return [h["seconds"] for h in history], (model, guide)


def train_plain_pyro(data, epochs: int, seed: int):
    encoder, decoder = build_networks(data.x_dim, seed)
    vae = PlainPyroVAE(encoder, decoder)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": LR}), loss=Trace_ELBO())
    loader, seconds = _loader(data.train_x, seed), []
    for _ in range(epochs):
        started = time.perf_counter()
        for (x,) in loader:
            svi.step(x)
        seconds.append(time.perf_counter() - started)
    return seconds, wrap(encoder, decoder)


def train_pytorch(data, epochs: int, seed: int):
    encoder, decoder = build_networks(data.x_dim, seed)
    pyro.set_rng_seed(seed)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=LR)
    loader, seconds = _loader(data.train_x, seed), []
    for _ in range(epochs):
        started = time.perf_counter()
        for (x,) in loader:
            loss = hand_loss(encoder, decoder, x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()
        seconds.append(time.perf_counter() - started)
    return seconds, wrap(encoder, decoder)


def train_pythae(data, epochs: int, seed: int):
    from pythae.data.datasets import BaseDataset
    from pythae.models import VAE as PythaeVAE
    from pythae.models import VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.trainers import BaseTrainer, BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback

    encoder, decoder = build_networks(data.x_dim, seed)

    class Enc(BaseEncoder):
        def __init__(self) -> None:
            super().__init__()
            self.net = encoder
            with torch.no_grad():  # pythae's head is log σ², ours log σ
                encoder.fc22.weight.mul_(2.0)
                encoder.fc22.bias.mul_(2.0)

        def forward(self, x):
            h = torch.nn.functional.softplus(self.net.fc1(x.reshape(x.shape[0], -1)))
            return ModelOutput(embedding=self.net.fc21(h), log_covariance=self.net.fc22(h))

    class Dec(BaseDecoder):
        def __init__(self) -> None:
            super().__init__()
            self.net = decoder

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)))

    class Timer(TrainingCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_epoch_begin(self, training_config, **kwargs):
            self.started = time.perf_counter()

        def on_epoch_end(self, training_config, **kwargs):
            self.seconds.append(time.perf_counter() - self.started)

    config = VAEConfig(input_dim=(data.x_dim,), latent_dim=LATENT, reconstruction_loss="bce")
    model = PythaeVAE(config, encoder=Enc(), decoder=Dec())
    timer = Timer()
    with tempfile.TemporaryDirectory() as out:
        trainer = BaseTrainer(
            model,
            train_dataset=BaseDataset(data.train_x, data.train_y),
            training_config=BaseTrainerConfig(
                output_dir=out,
                num_epochs=epochs,
                learning_rate=LR,
                per_device_train_batch_size=BATCH_SIZE,
                keep_best_on_train=True,
                seed=seed,
                no_cuda=True,
            ),
            callbacks=[timer],
        )
        trainer.train()
    return timer.seconds, wrap(encoder, decoder, log_scale_factor=0.5)


TRAINERS = {
    "pyro_vae": train_pyro_vae,
    "pyro_vae-uncompiled": lambda data, epochs, seed: train_pyro_vae(data, epochs, seed, False),
    "pyro_vae-inductor": lambda data, epochs, seed: train_pyro_vae(
        data, epochs, seed, True, "inductor"
    ),
    "plain-pyro": train_plain_pyro,
    "pytorch": train_pytorch,
    "pythae": train_pythae,
}


def evaluate(model, guide, test_x, eval_images: int, iwae_samples: int, seed: int) -> dict:
    """The common evaluator: test ELBO (10 samples, all test images) and IWAE log p(x)."""
    started = time.perf_counter()
    pyro.set_rng_seed(seed)
    test_elbo = elbo_per_datapoint(model, guide, test_x, num_samples=10).mean().item()
    log_px = iwae_log_likelihood(
        model, guide, test_x[:eval_images], num_samples=iwae_samples
    ).mean()
    return {
        "test_elbo": test_elbo,
        "log_px": log_px.item(),
        "eval_seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contender", choices=CONTENDERS, required=True)
    parser.add_argument("--json", type=output_file, required=True)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--num-train", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-images", type=int, default=1000)
    parser.add_argument("--iwae-samples", type=int, default=5000)
    parser.add_argument("--no-eval", action="store_true")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    data = load(args.data, args.num_train)
    # The first torch.optim.Adam imports torch._dynamo (seconds); keep that out of epoch 1.
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    data_mb = data.train_x.numel() * data.train_x.element_size() / 2**20
    with PeakRSS() as rss:
        seconds, (model, guide) = TRAINERS[args.contender](data, args.epochs, args.seed)
    result = {
        "contender": args.contender,
        "seconds": seconds,
        "num_train": int(data.train_x.shape[0]),
        "threads": torch.get_num_threads(),
        "train_data_mb": data_mb,
        "rss_before_training_mb": rss.start,
        "peak_rss_training_mb": rss.peak,
        "peak_rss_mb": max_rss_mb(),
    }
    if not args.no_eval:
        result.update(
            evaluate(model, guide, data.test_x, args.eval_images, args.iwae_samples, args.seed)
        )
        result["peak_rss_with_eval_mb"] = max_rss_mb()
    args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
