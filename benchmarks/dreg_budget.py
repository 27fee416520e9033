"""Test log p(x) after a fixed training budget: VAE, IWAE and IWAE with DReG.

Tucker et al. (2018) report that training the IWAE bound with doubly reparameterized
gradients (DReG) reaches a better log-likelihood than training it with the plain pathwise
gradient, whose encoder signal-to-noise ratio decays with K (``gradient_snr.py``). This
script trains, for each of ``--seeds`` seeds, the same VAE (``models.vae.VAE``: latent
dimension 20, one hidden layer of 200 softplus units, Bernoulli likelihood,
``AmortizedNormal`` encoder) on Fashion-MNIST statically binarized at 0.5, with the same
K = ``--k`` model evaluations per image and step:

- ``VAE (trace)``: ``trace`` with K vectorized particles (the average of K ELBO estimates);
- ``IWAE``: ``iwae`` with K = ``--k``, ``gradient="reparam"``;
- ``IWAE-DReG``: ``iwae`` with K = ``--k``, ``gradient="dreg"``;

- ``IAF guide (trace)``: ``trace`` with K vectorized particles, as the first column, with
  the encoder :class:`pyro_vae.guides.AmortizedIAF` (two inverse autoregressive flows on
  the encoder's context, Kingma et al. 2016) in place of ``AmortizedNormal``: the
  column asks what a richer q buys at the same budget and estimator;

each ``--epochs`` epochs on the first ``--train-images`` training images (all 60,000 by
default), batch 128, Adam at 1e-3, no early stopping. Each run is then scored by
``pyro_vae.evaluate.iwae_log_likelihood`` with ``--ll-samples`` importance samples on the
first ``--ll-points`` test images (nats per image). The table gives the mean over seeds ±
its standard error (sample standard deviation / √seeds).

The full budget of the issue (K = 16, 20 epochs, 3 seeds) is the default and takes hours
on a CPU; ``--epochs`` and ``--seeds`` (and ``--train-images``) give a smaller one, and the
table says which budget ran. Each finished run is also written to ``--results`` (JSON,
default: the table's path with ``.json``), and ``--resume`` skips the (contender, seed)
runs already there, so the full budget can be spread over several sittings (a run is
the unit: one killed mid-run starts over). Run from the repository root::

    .venv/bin/python benchmarks/dreg_budget.py                     # the full budget
    .venv/bin/python benchmarks/dreg_budget.py --resume            # ... continued
    .venv/bin/python benchmarks/dreg_budget.py --epochs 2 --seeds 2 --train-images 10000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyro
from report_common import load_average, mean_and_se, output_file, positive_int, run_footer

from models.vae import VAE
from pyro_vae import TrainConfig, fit, iwae_log_likelihood, load_data
from pyro_vae.estimators import get
from pyro_vae.guides import AmortizedIAF

HERE = Path(__file__).parent


def contenders(k: int) -> dict[str, dict]:
    """Registry name and options of each column."""
    return {
        "VAE (trace)": {"name": "trace", "num_particles": k, "vectorize_particles": True},
        "IWAE": {"name": "iwae", "num_particles": k},
        "IWAE-DReG": {"name": "iwae", "num_particles": k, "gradient": "dreg"},
        "IAF guide (trace)": {
            "name": "trace",
            "num_particles": k,
            "vectorize_particles": True,
            "guide": "iaf",
        },
    }


def one_run(data, options: dict, seed: int, args) -> tuple[float, float]:
    """(test log p(x), training seconds) of one contender and seed."""
    options = dict(options)
    name, family = options.pop("name"), options.pop("guide", "normal")
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model = VAE(data.x_dim, latent_dim=20, hidden_dims=(200,))
    guide = model.make_guide() if family == "normal" else AmortizedIAF(data.x_dim, 20, (200,))
    config = TrainConfig(epochs=args.epochs, lr=1e-3, seed=seed, patience=None, progress=False)
    started = time.perf_counter()
    fit(model, guide, data, get(name, **options), config)
    seconds = time.perf_counter() - started
    pyro.set_rng_seed(10_000 + seed)
    x = data.test_x[: args.ll_points]
    ll = iwae_log_likelihood(model, guide, x, args.ll_samples).mean().item()
    return ll, seconds


def table(results: dict[str, list[tuple[float, float]]], args, load, seconds, resumed=0) -> str:
    """The markdown table of ``results`` {contender: [(log p(x), training s) per seed]};
    ``load`` and ``seconds`` are this sitting's, ``resumed`` the runs it read from
    ``--results`` rather than trained."""
    names = list(results)
    trained = sum(s for runs in results.values() for _, s in runs)
    count = sum(len(runs) for runs in results.values())
    sittings = (
        f"; {resumed} of the {count} runs were trained in earlier sittings (--resume)"
        if resumed
        else ""
    )
    cells = []
    for name in names:
        mean, se = mean_and_se([ll for ll, _ in results[name]])
        cells.append(f"{mean:.2f} ± {se:.2f}" if len(results[name]) > 1 else f"{mean:.2f}")
    per_seed = [  # a partial table's seeds not run yet show as —
        f"| {name} | "
        + " | ".join([f"{ll:.2f}" for ll, _ in runs] + ["—"] * (args.seeds - len(runs)))
        + f" | {sum(s for _, s in runs) / len(runs):.0f} |"
        for name, runs in results.items()
    ]
    full = (args.k, args.epochs, args.seeds, args.train_images) == (16, 20, 3, 60000)
    budget = "the full budget of issue 17" if full else "a SMALLER budget than issue 17's"
    return "\n".join(
        [
            "# Test log p(x) after a fixed budget: VAE, IWAE, IWAE-DReG, IAF guide",
            "",
            f"Written by `benchmarks/dreg_budget.py`: {budget} (K = {args.k}, "
            f"{args.epochs} epochs on {args.train_images} Fashion-MNIST training images, "
            f"{args.seeds} seed(s)); log p(x) by `iwae_log_likelihood` with K = "
            f"{args.ll_samples} on the first {args.ll_points} test images, nats per image, "
            "mean over seeds ± standard error.",
            "",
            "| " + " | ".join(names) + " |",
            "|" + "---:|" * len(names),
            "| " + " | ".join(cells) + " |",
            "",
            "Per seed (log p(x)) and mean training seconds per run:",
            "",
            "| contender | " + " | ".join(f"seed {s}" for s in range(args.seeds)) + " | s |",
            "|---|" + "---:|" * (args.seeds + 1),
            *per_seed,
            "",
            f"Training {trained:.0f} s in all over {count} runs (evaluations not counted)"
            f"{sittings}. This sitting: " + run_footer(load, seconds),
            "",
        ]
    )


SETTINGS = ("k", "epochs", "seeds", "train_images", "ll_samples", "ll_points")


def finished_runs(args) -> dict[tuple[str, int], tuple[float, float]]:
    """{(contender, seed): (log p(x), seconds)} of ``--results`` when resuming, or
    ValueError when that file was written with other settings."""
    if not args.resume or not args.results.exists():
        return {}
    saved = json.loads(args.results.read_text())
    mine = {key: getattr(args, key) for key in SETTINGS}
    if saved["settings"] != mine:
        raise ValueError(
            f"--resume: {args.results} holds runs with settings {saved['settings']}, not "
            f"{mine}; give those settings, another --results, or no --resume"
        )
    return {(r["contender"], r["seed"]): (r["log_px"], r["seconds"]) for r in saved["runs"]}


def save_runs(args, done: dict[tuple[str, int], tuple[float, float]]) -> None:
    runs = [
        {"contender": name, "seed": seed, "log_px": ll, "seconds": seconds}
        for (name, seed), (ll, seconds) in done.items()
    ]
    settings = {key: getattr(args, key) for key in SETTINGS}
    temporary = args.results.with_suffix(".json.tmp")
    temporary.write_text(json.dumps({"settings": settings, "runs": runs}, indent=1))
    temporary.replace(args.results)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=positive_int, default=3)
    parser.add_argument("--train-images", type=int, default=60000)
    parser.add_argument("--ll-samples", type=int, default=1000)
    parser.add_argument("--ll-points", type=int, default=1000)
    parser.add_argument("--output", type=output_file, default=HERE / "dreg_budget.md")
    parser.add_argument("--results", type=Path, default=None, help="JSON of finished runs")
    parser.add_argument("--resume", action="store_true", help="skip the runs in --results")
    args = parser.parse_args(argv)
    args.results = args.results or args.output.with_suffix(".json")
    started = time.perf_counter()
    load_start = load_average(" ")
    print(f"load average {load_start}", flush=True)
    data = load_data("fashion-mnist", val_fraction=0.0)
    data.train_x = data.train_x[: args.train_images]
    args.train_images = int(data.train_x.shape[0])
    done = finished_runs(args)
    resumed = len(done)
    results: dict[str, list[tuple[float, float]]] = {}
    for seed in range(args.seeds):  # seeds outside, so a partial table is paired by seed
        for name, options in contenders(args.k).items():
            if (name, seed) not in done:
                done[(name, seed)] = one_run(data, options, seed, args)
                save_runs(args, done)
            ll, seconds = done[(name, seed)]
            results.setdefault(name, []).append((ll, seconds))
            print(f"{name:<12} seed {seed}: log p(x) {ll:.2f} ({seconds:.0f} s)", flush=True)
            partial = table(
                results, args, (load_start, "(running)"), time.perf_counter() - started, resumed
            )
            args.output.write_text(partial.replace("# Test", "# (PARTIAL: still running) Test", 1))
    load_end = load_average(" ")
    text = table(results, args, (load_start, load_end), time.perf_counter() - started, resumed)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
