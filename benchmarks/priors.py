"""The VAE's three priors side by side on the digits: N(0, I), a learned mixture of
Gaussians, and the VampPrior (Tomczak & Welling 2018).

``python benchmarks/priors.py`` writes ``benchmarks/priors.md`` (``--quick``: tiny sizes
and no recorded step, for the smoke test). For each seed and prior it builds what
``pyro-vae fit --data digits --no-progress --patience 0 --seed S --epochs E --model-opt
prior=P --model-opt prior_components=K`` builds (:func:`pyro_vae.experiment.build` of the
same :class:`~pyro_vae.run_config.RunConfig`; its recorded step, as ``--compile auto``
chooses), trains it by :func:`pyro_vae.fit` (``trace``, Adam, the best-validation weights kept) and
scores the test set as the command does (:func:`pyro_vae.experiment.evaluate_test_set`):
test ELBO, IWAE log p(x) (K = ``--ll-samples``), KL(q ‖ p) by Monte Carlo, active units.
The figures the command draws are left out. Every prior gets the same epochs, seeds,
data split, network sizes and learning rate.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import pyro
import torch
from report_common import load_average, machine_footer, mean_and_se, output_file, quick_settings

from pyro_vae import fit
from pyro_vae.experiment import build, evaluate_test_set
from pyro_vae.run_config import EvaluationConfig, ModelConfig, RunConfig
from pyro_vae.training_config import TrainingConfig

HERE = Path(__file__).parent
METRICS = {
    "elbo": "test ELBO",
    "log_likelihood": "test log p(x)",
    "kl": "KL(q ‖ p)",
    "active_units": "active units",
}


def priors(args) -> dict[str, dict]:
    """Each prior's model options, keyed by the table's row name."""
    return {
        "N(0, I)": {"prior": "normal"},
        f"mixture of Gaussians, K = {args.mog_components}": {
            "prior": "mog",
            "prior_components": args.mog_components,
        },
        f"VampPrior, K = {args.vamp_components}": {
            "prior": "vamp",
            "prior_components": args.vamp_components,
        },
    }


def run_one(options: dict, seed: int, args) -> dict:
    """Train one VAE as ``pyro-vae fit`` would and score its test set."""
    model = ModelConfig(
        "models.vae:VAE",
        {"latent_dim": args.latent_dim, "hidden_dims": list(args.hidden), **options},
    )
    training = TrainingConfig(
        epochs=args.epochs,
        patience=None,
        seed=seed,
        progress=False,
        compile=not args.quick,
        device="cpu",
    )
    config = RunConfig(model, training=training, evaluation=EvaluationConfig(args.ll_samples))
    exp = build(config)
    started = time.perf_counter()
    result = fit(exp.model, exp.guide, exp.data, exp.elbo, training)
    seconds = time.perf_counter() - started
    pyro.set_rng_seed(seed)
    test = evaluate_test_set(exp, args.ll_samples, None)
    return {**test, "train_seconds": seconds, "best_epoch": result.best_epoch}


def cell(values: list[float], digits: int = 2) -> str:
    mean, se = mean_and_se(values)
    return f"{mean:.{digits}f}" + ("" if math.isnan(se) else f" ± {se:.{digits}f}")


def table(results: dict, args, loads: tuple[str, str], seconds: float) -> str:
    seeds = args.seeds
    lines = [
        "# The VAE's priors on the digits: N(0, I), a mixture of Gaussians, the VampPrior",
        "",
        "Written by `python benchmarks/priors.py` "
        f"({' '.join(args.argv) or 'default settings'}); see its docstring for the protocol.",
        "",
        f"`models.vae:VAE` (latent {args.latent_dim}, hidden {args.hidden}, Bernoulli pixels, "
        f"static binarization at 0.5), {args.epochs} epochs of `trace` (Adam, lr 1e-3, batch "
        f"128), the best-validation weights kept; seeds {seeds}. Test set: 180 images; ELBO "
        f"and KL from 10 draws per image, log p(x) by IWAE with K = {args.ll_samples}. "
        f"Mean ± standard error over the {len(seeds)} seeds (nats per image).",
        "",
        "| prior | " + " | ".join(METRICS.values()) + " | log p(x) − N(0, I)'s | train (s) |",
        "|---|" + "---|" * (len(METRICS) + 2),
    ]
    normal = [r["log_likelihood"] for r in next(iter(results.values()))]
    for name, runs in results.items():
        cells = [cell([r[k] for r in runs], 1 if k == "active_units" else 2) for k in METRICS]
        paired = [r["log_likelihood"] - n for r, n in zip(runs, normal, strict=True)]
        change = "—" if name == "N(0, I)" else f"{cell(paired)}"
        train = mean_and_se([r["train_seconds"] for r in runs])[0]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {change} | {train:.0f} |")
    lines += [
        "",
        "The difference in log p(x) is paired by seed: the same data split and minibatches, "
        "the same initial decoder (and encoder, except under the mixture of Gaussians, whose "
        "parameters are drawn before the encoder's).",
        "",
        machine_footer(loads, seconds),
    ]
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    p.add_argument("--out", type=output_file, default=HERE / "priors.md")
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--hidden", type=int, nargs="+", default=[400])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--mog-components", type=int, default=10)
    p.add_argument("--vamp-components", type=int, default=50)
    p.add_argument("--ll-samples", type=int, default=1000)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.argv = argv
    if args.quick:
        quick = dict(latent_dim=3, hidden=[16], epochs=1, seeds=[0])
        quick.update(mog_components=3, vamp_components=4, ll_samples=8)
        quick_settings(p, argv, args, quick)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    # Small tensors: on a busy 2-core machine a second thread costs more than it gives.
    torch.set_num_threads(1)
    loads = [load_average()]
    print(f"load average {loads[0]}", flush=True)
    started = time.perf_counter()
    results = {name: [] for name in priors(args)}
    for seed in args.seeds:
        for name, options in priors(args).items():
            results[name].append(run_one(options, seed, args))
            r = results[name][-1]
            print(
                f"seed {seed}, {name}: ELBO {r['elbo']:.2f}, log p(x) "
                f"{r['log_likelihood']:.2f}, KL {r['kl']:.2f}, {r['train_seconds']:.0f} s",
                flush=True,
            )
    loads.append(load_average())
    text = table(results, args, tuple(loads), time.perf_counter() - started)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
