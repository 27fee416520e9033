"""Gradient estimators side by side: variance at fixed parameters, and training.

One command, one process (``python benchmarks/estimators.py``), writes
``benchmarks/estimators.md`` and ``benchmarks/estimators.png``:

1. **Variance on the sigmoid belief network.** An SBN (50 binary latents, linear decoder
   and recognition network) is fitted on ``digits`` with ``score`` + leave-one-out. At
   those fixed weights, on one batch of 128 images, each estimator's guide gradient is
   drawn 200 times with K = 4 samples per draw (so every row costs the same model
   evaluations): REINFORCE without a control variate, with a moving average, with
   leave-one-out, with NVIL's neural baseline (trained first for 500 steps at the fixed
   weights, variance normalization off so variances compare), and Pyro's
   ``TraceGraph_ELBO`` without and with its decaying-average baseline.
2. **Training.** The SBN trained with ``score``/leave-one-out on ``digits`` and
   ``fashion-mnist`` (validation ELBO per epoch), and the Gaussian-latent VAE on
   ``digits`` trained by ``trace`` and by ``score``/leave-one-out with K = 4 each (equal
   model evaluations per step), same epochs, same seed.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import pyro
import torch
from report_common import output_file

from models.sbn import SBN
from models.vae import VAE
from pyro_vae import Preprocessing, TrainConfig, elbo_per_datapoint, fit, load_data
from pyro_vae.datasets import FASHION_MNIST_DIR
from pyro_vae.diagnostics.gradient_variance import gradient_variance
from pyro_vae.estimators import ScoreFunctionELBO, get
from pyro_vae.plots import plot_gradient_variance

HERE = Path(__file__).parent
K = 4


def train_sbn(data, epochs, seed=0):
    pyro.set_rng_seed(seed)
    model = SBN(data.x_dim, latent_dim=50)
    guide = model.make_guide()
    result = fit(
        model,
        guide,
        data,
        get("score", control_variate="leave-one-out", num_particles=K),
        TrainConfig(epochs=epochs, lr=3e-3, seed=seed, patience=None, progress=False),
    )
    return model, guide, result


def warm_nvil(model, guide, x, num_data, steps=500):
    """Fit NVIL's baseline network (only) at the fixed model and guide weights."""
    estimator = ScoreFunctionELBO(K, "neural", normalize_variance=False)
    estimator.differentiable_loss(model, guide, x, num_data=num_data)
    optimizer = torch.optim.Adam(estimator._networks["z"].parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        estimator.differentiable_loss(model, guide, x, num_data=num_data).backward()
        optimizer.step()
    return estimator


def variance_table(model, guide, data, draws):
    x, _ = next(iter(data.train_batches(128, 0, 0)))
    n = data.train_x.shape[0]
    decaying = SBN(data.x_dim, latent_dim=50).make_guide()
    decaying.baseline = {"use_decaying_avg_baseline": True}
    decaying.load_state_dict(guide.state_dict())
    contenders = [
        ("score, no control variate (REINFORCE)", lambda: get("score", num_particles=K), guide),
        (
            "score, moving average",
            lambda: get("score", control_variate="ema", num_particles=K),
            guide,
        ),
        (
            "score, leave-one-out",
            lambda: get("score", control_variate="leave-one-out", num_particles=K),
            guide,
        ),
        ("score, NVIL neural baseline", lambda: warm_nvil(model, guide, x, n), guide),
        (
            "Pyro TraceGraph_ELBO",
            lambda: get("tracegraph", num_particles=K, vectorize_particles=True),
            guide,
        ),
        (
            "Pyro TraceGraph_ELBO, decaying average",
            lambda: get("tracegraph", num_particles=K, vectorize_particles=True),
            decaying,
        ),
    ]
    rows = []
    for label, make, q in contenders:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        estimator = make()
        stats = gradient_variance(model, q, estimator, x, num_data=n, num_draws=draws)["guide"]
        rows.append(
            {
                "estimator": label,
                "group": "guide",
                "variance": stats.variance,
                "snr": stats.snr,
                "seconds_per_draw": stats.seconds_per_draw,
            }
        )
        print(f"{label:<42} variance {stats.variance:10.4g}  SNR {stats.snr:7.3f}")
    return rows


def vae_comparison(data, epochs):
    out = {}
    for label, estimator in (
        ("trace, K=4", get("trace", num_particles=K, vectorize_particles=True)),
        (
            "score leave-one-out, K=4",
            get("score", control_variate="leave-one-out", num_particles=K),
        ),
    ):
        pyro.set_rng_seed(0)
        model = VAE(data.x_dim, latent_dim=10, hidden_dims=(200,))
        guide = model.make_guide()
        started = time.perf_counter()
        result = fit(
            model,
            guide,
            data,
            estimator,
            TrainConfig(epochs=epochs, lr=3e-3, patience=None, progress=False),
        )
        seconds = time.perf_counter() - started
        pyro.set_rng_seed(1)
        test = elbo_per_datapoint(model, guide, data.test_x, 10).mean().item()
        out[label] = (result.history, test, seconds)
        print(f"VAE {label}: test ELBO {test:.2f} in {seconds:.0f} s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sbn-epochs", type=int, default=100)
    parser.add_argument("--fashion-epochs", type=int, default=10)
    parser.add_argument("--vae-epochs", type=int, default=100)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument(
        "--out", type=output_file, default=HERE / "estimators.md", help="markdown (and .png)"
    )
    args = parser.parse_args()

    digits = load_data("digits", Preprocessing("bernoulli"))
    model, guide, sbn_digits = train_sbn(digits, args.sbn_epochs)
    rows = variance_table(model, guide, digits, args.draws)
    plot_gradient_variance(rows, args.out.with_suffix(".png"), num_draws=args.draws)
    vae = vae_comparison(digits, args.vae_epochs)
    fashion = None
    if FASHION_MNIST_DIR.is_dir():
        fashion_data = load_data("fashion-mnist", Preprocessing("bernoulli"), val_fraction=0.1)
        _, _, fashion = train_sbn(fashion_data, args.fashion_epochs)

    base = rows[0]["variance"]
    lines = [
        "# Gradient estimators",
        "",
        f"Written by `python benchmarks/estimators.py` on {platform.platform()}, "
        f"torch {torch.__version__}, pyro {pyro.__version__}, {torch.get_num_threads()} threads.",
        "",
        "## Variance of the guide gradient on the sigmoid belief network",
        "",
        f"SBN with 50 binary latents fitted on digits ({args.sbn_epochs} epochs, score + "
        f"leave-one-out); {args.draws} draws at those fixed weights, one batch of 128, "
        f"K = {K} samples per draw for every row (equal model evaluations).",
        "",
        "| estimator | variance (trace of covariance) | reduction vs. REINFORCE | SNR ‖E g‖/√var "
        "| ms per draw |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['estimator']} | {r['variance']:.4g} | {base / r['variance']:.1f}x "
            f"| {r['snr']:.3f} | {1000 * r['seconds_per_draw']:.1f} |"
        )
    lines += [
        "",
        f"![variance and SNR]({args.out.with_suffix('.png').name})",
        "",
        "## Training",
        "",
        "| run | validation ELBO after epoch 1, 25%, 50%, 100% of training | test ELBO |",
        "|---|---|---:|",
    ]

    def marks(history):
        idx = [0, len(history) // 4 - 1, len(history) // 2 - 1, len(history) - 1]
        return ", ".join(f"{history[i].get('val_elbo', history[i]['train_elbo']):.2f}" for i in idx)

    pyro.set_rng_seed(1)
    sbn_test = elbo_per_datapoint(model, guide, digits.test_x, 10).mean().item()
    lines.append(
        f"| SBN, digits, score leave-one-out | {marks(sbn_digits.history)} | {sbn_test:.2f} |"
    )
    if fashion is not None:
        lines.append(
            f"| SBN, Fashion-MNIST, score leave-one-out | {marks(fashion.history)} | "
            "(validation set) |"
        )
    for label, (history, test, seconds) in vae.items():
        lines.append(
            f"| Gaussian VAE, digits, {label} ({seconds:.0f} s) | {marks(history)} | {test:.2f} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
