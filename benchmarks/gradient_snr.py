"""The encoder's gradient signal-to-noise ratio of ``iwae`` and ``iwae`` with DReG, by K.

Rainforth et al. (2018, "Tighter variational bounds are not necessarily better") showed
that the IWAE bound's pathwise gradient for the inference network has a signal-to-noise
ratio that falls like O(1/√K) as the number of importance samples K grows, while the
generative network's rises; Tucker et al. (2018) showed that the doubly reparameterized
estimator (DReG) has no such decay for the inference network. This script measures both
on one VAE, side by side, in one process:

1. A VAE (``models.vae.VAE``: latent dimension 20, one hidden layer of 200 softplus units,
   Bernoulli likelihood, ``AmortizedNormal`` encoder) is trained briefly on Fashion-MNIST
   statically binarized at 0.5 (Debian's ``dataset-fashion-mnist``, loaded by
   ``pyro_vae.load_data("fashion-mnist")``) with ``trace``, ``--train-images`` training
   images (all 60,000 by default), ``--epochs`` epochs (10), batch 128, Adam at 1e-3,
   seed 0. Its weights are then FIXED.
2. On ``--batch`` test image(s) (one by default: the per-datapoint gradient Rainforth et
   al. analyse; a batch sums its images' signals), for K in ``--ks`` (1, 4, 16, 64 and
   256 by default) and for each estimator
   (``iwae`` with ``gradient="reparam"``, ``iwae`` with ``gradient="dreg"``), the gradient
   of the loss is drawn ``--draws`` times (same seed for both estimators) without any
   optimizer step. For each encoder parameter element i, SNR_i = |mean_i| / std_i over
   the draws (Rainforth et al.'s per-parameter SNR); the table reports the median and
   the upper quartile over the encoder's elements, and the median over the decoder's
   for reference (its SNR should rise with K for both).

The load average is printed and written with the table: timings are not reported (SNR
does not depend on the machine), but a loaded machine makes the run slower.

Run from the repository root::

    .venv/bin/python benchmarks/gradient_snr.py            # writes benchmarks/gradient_snr.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyro
import torch
from report_common import load_average, output_file, positive_int, run_footer

from models.vae import VAE
from pyro_vae import TrainConfig, fit, load_data
from pyro_vae.estimators import get

HERE = Path(__file__).parent
GRADIENTS = ("reparam", "dreg")


def train(epochs: int, images: int):
    """The briefly trained VAE, its guide and the data."""
    data = load_data("fashion-mnist", val_fraction=0.0)
    data.train_x = data.train_x[:images]
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = VAE(data.x_dim, latent_dim=20, hidden_dims=(200,))
    guide = model.make_guide()
    config = TrainConfig(epochs=epochs, lr=1e-3, seed=0, patience=None, progress=False)
    fit(model, guide, data, get("trace"), config)
    return model, guide, data


def snr_draws(model, guide, x, estimator, draws: int) -> dict[str, torch.Tensor]:
    """Per-element SNR |mean| / std of the loss's gradient over ``draws`` draws, for the
    encoder's (guide's) and the decoder's (model's) parameters, at the current weights."""
    groups = {"encoder": list(guide.parameters()), "decoder": list(model.parameters())}
    samples: dict[str, list[torch.Tensor]] = {g: [] for g in groups}
    pyro.set_rng_seed(1)
    for _ in range(draws):
        for params in groups.values():
            for p in params:
                p.grad = None
        estimator.loss_and_grads(model, guide, x)
        for group, params in groups.items():
            samples[group].append(torch.cat([p.grad.flatten() for p in params]))
    out = {}
    for group, rows in samples.items():
        stacked = torch.stack(rows)
        std = stacked.std(0)
        keep = std > 0  # elements no draw moves (dead units) have no SNR
        out[group] = stacked.mean(0)[keep].abs() / std[keep]
    return out


def measure(model, guide, x, ks, draws):
    rows = []
    for k in ks:
        for gradient in GRADIENTS:
            started = time.perf_counter()
            estimator = get("iwae", num_particles=k, gradient=gradient)
            snr = snr_draws(model, guide, x, estimator, draws)
            row = {
                "k": k,
                "gradient": gradient,
                "encoder_median": snr["encoder"].median().item(),
                "encoder_q75": snr["encoder"].quantile(0.75).item(),
                "decoder_median": snr["decoder"].median().item(),
                "seconds": time.perf_counter() - started,
            }
            rows.append(row)
            print(
                f"K={k:<3} {gradient:<8} encoder SNR median {row['encoder_median']:.4f} "
                f"(q75 {row['encoder_q75']:.4f}), decoder median {row['decoder_median']:.4f} "
                f"[{row['seconds']:.0f} s]",
                flush=True,
            )
    return rows


def verdict(rows, ks) -> str:
    """Whether Rainforth et al.'s prediction holds: IWAE's encoder SNR at the largest K
    below 0.8x its value at the smallest, DReG's not."""
    by = {(r["k"], r["gradient"]): r["encoder_median"] for r in rows}
    parts, falls = [], {}
    for gradient, label in (("reparam", "IWAE"), ("dreg", "DReG")):
        snr = [by[k, gradient] for k in ks]
        peak = max(range(len(ks)), key=snr.__getitem__)
        falls[gradient] = snr[-1] < 0.8 * snr[0]
        parts.append(
            f"{label}'s encoder SNR goes from {snr[0]:.3f} at K={ks[0]} to {snr[-1]:.3f} at "
            f"K={ks[-1]} ({snr[-1] / snr[0]:.2f}x), peaking at {snr[peak]:.3f} (K={ks[peak]})"
        )
    ratios = ", ".join(f"{by[k, 'dreg'] / by[k, 'reparam']:.2f}x" for k in ks)
    holds = falls["reparam"] and not falls["dreg"]
    return (
        "; ".join(parts)
        + f". DReG over IWAE at each K: {ratios}. Rainforth et al.'s prediction (IWAE's "
        f"encoder SNR falls with K, like O(1/√K) asymptotically, DReG's does not) "
        f"{'holds' if holds else 'does not hold'} over these K at these weights."
    )


def table(rows, args, load, seconds) -> str:
    lines = [
        "# Encoder gradient SNR: iwae vs iwae + DReG, by K",
        "",
        "Written by `benchmarks/gradient_snr.py` (its docstring says what is measured). "
        f"VAE (latent 20, hidden 200) trained {args.epochs} epoch(s) with `trace` on "
        f"{args.train_images} Fashion-MNIST training images, then fixed; {args.draws} "
        f"gradient draws per row on {args.batch} test images. SNR per parameter element = "
        "|mean| / std over the draws; median (and upper quartile) over the elements.",
        "",
        "| K | gradient | encoder SNR, median | encoder SNR, q75 | decoder SNR, median |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['k']} | {r['gradient']} | {r['encoder_median']:.4f} | "
            f"{r['encoder_q75']:.4f} | {r['decoder_median']:.4f} |"
        )
    lines += [
        "",
        verdict(rows, args.ks),
        "",
        run_footer(load, seconds),
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--train-images", type=int, default=60000)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--draws", type=positive_int, default=100, help="at least 2: a variance needs two"
    )
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    parser.add_argument("--output", type=output_file, default=HERE / "gradient_snr.md")
    args = parser.parse_args(argv)
    if args.draws < 2:
        parser.error(f"argument --draws: {args.draws} draw gives no variance; expected at least 2")
    started = time.perf_counter()
    load_start = load_average(" ")
    print(f"load average {load_start}", flush=True)
    model, guide, data = train(args.epochs, args.train_images)
    x = data.test_x[: args.batch]
    rows = measure(model, guide, x, args.ks, args.draws)
    load_end = load_average(" ")
    print(f"load average {load_end}")
    text = table(rows, args, (load_start, load_end), time.perf_counter() - started)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
