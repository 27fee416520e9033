"""AutoCAVI beside the hand-written CAVI class and mean-field SVI, on ``cavi_vs_svi.py``'s sizes.

``python benchmarks/autocavi.py`` writes ``benchmarks/autocavi.md`` (``--quick``: few SVI
steps, for a smoke run). Bounds are whole-data ELBOs in nats. For each model:

- the hand-written class (``BayesianLinearRegression``, ``BayesianGaussianMixture``) and
  ``AutoCAVI`` on the Pyro model (``models/regression.py``; ``models/gmm.py`` with
  ``precision_parameterization="wishart"`` and the block (means, precisions)), from the same
  start: E[τ] = a₀/b₀, and the class's k-means responsibilities (``reg_covar=0`` so both
  run the same update). AutoCAVI's time includes probing the model, shown apart. Each fit
  is timed as the least of 30 calls after a first one (which pays for lazy
  initialization), the two classes' calls taking turns so that a shared machine's load
  falls on both alike, twice: warm, as ``timeit`` times (Python's garbage collector paused
  for the whole loop, calls back to back), and after ``gc.collect()`` before each call,
  whose freed memory and evicted caches the next call pays for again (a fit's cost when
  other work ran before it: 0.8 ms more for the regression's 0.3 ms closed form). The
  probing time shown is the fastest warm call's.
- one plain Pyro run of the model (``poutine.trace`` and every log-density, validation
  off), timed warm the same way: what any method that runs the model even once pays, and
  so the floor under AutoCAVI's time; beside it, how many model runs AutoCAVI made (its
  seeded first run and ``probe_model_runs_``) and that many plain runs' time, a floor no
  faster sweep or solve lowers (a batched run of many points costs more than a plain one).
- mean-field SVI as in ``cavi_vs_svi.py`` (regression: ``AutoNormal``, ``Trace_ELBO`` with 8
  vectorized particles, Adam 0.02, 3000 steps; mixture: the Bartlett model's ``AutoNormal``
  from k-means, ``TraceEnum_ELBO`` with 4 particles, Adam 0.01, 1000 steps), its final ELBO
  re-estimated from fresh draws, and its time to its own final bound: the steps up to the
  first at which the 100-step moving average of its training ELBO comes within 0.1 nats of
  the last 100 steps' average, times its fastest step (timed as AutoCAVI is, at its
  fastest: its wall clock to that step had moved 1.8 to 2.6 s between runs on a shared
  machine, and the ratio below with it from 53 to 103).

Three ratios close each row: AutoCAVI's time over the hand-written class's, warm and after a
collection (issue 18's target: at most 2), and SVI's time to its own final bound over
AutoCAVI's slower time (target: at least 100).
The header records the 1-minute load average before and after the run (the machine may be
shared, and every time here is wall time).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from pyro.infer.autoguide import AutoNormal
from report_common import output_file
from sklearn.cluster import KMeans

from models.gmm import GaussianMixtureModel
from models.regression import BayesianRegression
from pyro_vae import elbo_estimate
from pyro_vae.cavi import AutoCAVI, BayesianGaussianMixture, BayesianLinearRegression

HERE = Path(__file__).parent
F64 = torch.float64


def timed(*fits, repeats=30, collect=False):
    """For each callable, (the result of its fastest of ``repeats`` calls after a warm-up
    call, that call's wall time); the callables take turns, so a shared machine's load
    falls on each alike and their ratio is fair. The garbage collector is paused for the
    whole loop, as ``timeit`` does (a collection's pause belongs to whichever call it lands
    in); ``collect``: run ``gc.collect()`` before each call instead (each call then starts
    with the memory and caches a collection leaves)."""
    for f in fits:
        f()  # warm-up: the first call in a process pays for lazy imports and allocations
    best = [(None, float("inf"))] * len(fits)
    collecting = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for i, f in enumerate(fits):
                if collect:
                    gc.collect()
                start = time.perf_counter()
                result = f()
                seconds = time.perf_counter() - start
                if seconds < best[i][1]:
                    best[i] = (result, seconds)
    finally:
        if collecting:
            gc.enable()
    return best


def plain_run(model, *args):
    """One plain Pyro run of ``model``: its trace and every site's log-density, validation
    off (as AutoCAVI runs it)."""

    def run():
        with pyro.validation_enabled(False), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Singular sample detected")
            pyro.poutine.trace(model).get_trace(*args).compute_log_prob()

    return timed(run)[0][1]


def timed_fits(hand, auto, model, *args):
    """(hand-written fit, AutoCAVI fit, {"warm": (hand s, AutoCAVI s), "collected": (…)},
    plain model run s)."""
    (hand_fit, hand_s), (auto_fit, auto_s) = timed(hand, auto)
    (_, hand_c), (_, auto_c) = timed(hand, auto, collect=True)
    times = {"warm": (hand_s, auto_s), "collected": (hand_c, auto_c)}
    return hand_fit, auto_fit, times, plain_run(model, *args)


def svi_run(model, guide, args, loss, steps, lr, draws):
    """(final ELBO, its standard error, total seconds, seconds to reach its final bound)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), loss)
    elbos, durations = [], []
    for _ in range(steps):
        start = time.perf_counter()
        elbos.append(-svi.step(*args))
        durations.append(time.perf_counter() - start)
    window = min(100, steps)
    average = np.convolve(elbos, np.ones(window) / window, mode="valid")
    reached = int(np.argmax(average >= average[-1] - 0.1)) + window - 1
    elbo, stderr = elbo_estimate(model, guide, *args, num_samples=draws)
    return elbo, stderr, sum(durations), (reached + 1) * min(durations)


def regression_row(quick):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 3, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.5 * torch.randn(200, generator=g)
    X, y = X.double(), y.double()
    start = {"precision": dist.Gamma(torch.tensor(1.0, dtype=F64), torch.tensor(1.0, dtype=F64))}
    pyro_model = BayesianRegression()  # the user's model, built once, as the data are
    fits = timed_fits(
        lambda: BayesianLinearRegression(tol=1e-8).fit(X, y),
        lambda: AutoCAVI(pyro_model, init=start, tol=1e-8).fit(X, y),
        pyro_model, X, y,
    )  # fmt: skip
    model = BayesianRegression()
    loss = Trace_ELBO(num_particles=8, vectorize_particles=True)
    svi = svi_run(model, AutoNormal(model), (X.float(), y.float()), loss,
                  100 if quick else 3000, 0.02, 200 if quick else 10000)  # fmt: skip
    return ("regression, N=200, D=3", *fits, svi)


def mixture_row(quick):
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    X = np.concatenate([rng.normal(c, 1.0, size=(100, 2)) for c in centres])
    Xt = torch.from_numpy(X)
    settings = dict(random_state=0, max_iter=500, tol=1e-8, reg_covar=0.0)
    # the class's own start: its k-means responsibilities from the same seed
    reference = BayesianGaussianMixture(3, **settings)
    gen = torch.Generator().manual_seed(int(np.random.default_rng(0).integers(2**31)))
    resp = reference._initial_resp(reference._check(X), gen)
    wishart = GaussianMixtureModel.from_data(Xt, 3, precision_parameterization="wishart")
    wishart = wishart.double()  # the user's model, converted once, as the data are
    fits = timed_fits(
        lambda: BayesianGaussianMixture(3, **settings).fit(X),
        lambda: AutoCAVI(wishart, init={"assignment": resp},
                         blocks=[("means", "precisions")], tol=1e-8, max_iter=500).fit(Xt),
        wishart, Xt,
    )  # fmt: skip
    X32 = Xt.float()
    km = KMeans(3, n_init=1, random_state=0).fit(X32.numpy())
    covariances = np.stack([np.cov(X32.numpy()[km.labels_ == j].T) for j in range(3)])
    model = GaussianMixtureModel.from_data(X32, 3)
    guide = model.make_guide(km.cluster_centers_, covariances)
    loss = TraceEnum_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    svi = svi_run(model, guide, (X32,), loss, 50 if quick else 1000, 0.01, 100 if quick else 4000)
    return ("mixture, N=300, K=3, D=2", *fits, svi)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few SVI steps (smoke run)")
    parser.add_argument("--out", type=output_file, default=HERE / "autocavi.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    rows = [regression_row(args.quick), mixture_row(args.quick)]
    load_after = os.getloadavg()[0]
    lines = [
        "# AutoCAVI, the hand-written CAVI class and mean-field SVI",
        "",
        f"`python benchmarks/autocavi.py{' --quick' if args.quick else ''}` on "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"pyro {pyro.__version__}, 1 thread, load average {load_before:.2f} before and "
        f"{load_after:.2f} after ({os.cpu_count()} cores). Whole-data ELBOs in nats; seconds "
        "of wall time.",
        "",
        "Times in ms are warm / after `gc.collect()` (see the module docstring); the plain "
        "run is one Pyro trace of the model with every log-density, the floor under any "
        "method that runs the model once. AutoCAVI runs the model several times (its seeded "
        "first run, which also tracks which latents each factor reads, the batched probe "
        "runs and the check at q; a batched run counts once, and costs more than a plain "
        "one), so their number times the plain run is a floor under its time that no "
        "faster sweep or solve lowers: where that floor exceeds twice the hand-written "
        "fit, issue 18's 2x target is out of reach of any method that probes the model. "
        "SVI's time to its final bound is its steps to "
        "it times its fastest step (AutoCAVI's times are likewise its fastest calls), and "
        "its ratio is over AutoCAVI's slower time.",
        "",
        "| model | hand-written bound | ms | AutoCAVI bound | ms | probing ms | sweeps | "
        "plain model run ms | AutoCAVI's model runs | their floor, ms | "
        "SVI ELBO ± se | SVI s | SVI s to its final bound | "
        "AutoCAVI / hand, warm | AutoCAVI / hand, after collection | "
        "SVI s to bound / AutoCAVI s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, hand, auto, times, plain_s, (elbo, se, svi_s, reach_s) in rows:
        (hand_w, auto_w), (hand_c, auto_c) = times["warm"], times["collected"]
        runs = 1 + auto.probe_model_runs_  # the seeded first run is not counted there
        lines.append(
            f"| {name} | {hand.lower_bound_:.3f} | {hand_w * 1e3:.2f} / {hand_c * 1e3:.2f} | "
            f"{auto.lower_bound_:.3f} | {auto_w * 1e3:.1f} / {auto_c * 1e3:.1f} | "
            f"{auto.probe_seconds_ * 1e3:.1f} | {auto.n_iter_} | {plain_s * 1e3:.2f} | "
            f"{runs} | {runs * plain_s * 1e3:.2f} | "
            f"{elbo:.3f} ± {se:.3f} | {svi_s:.1f} | {reach_s:.2f} | {auto_w / hand_w:.1f} | "
            f"{auto_c / hand_c:.1f} | {reach_s / max(auto_w, auto_c):.0f} |"
        )
    lines += [
        "",
        "Where AutoCAVI's time goes: probing the model once (tracing, provenance, the batched "
        "probe runs and the least-squares solves), then the sweeps; the hand-written class has "
        "no probing. Milliseconds per sweep (warm):",
        "",
        "| model | hand-written, per iteration | AutoCAVI, per sweep (its time less probing) |",
        "|---|---:|---:|",
    ]
    for name, hand, auto, times, _, _ in rows:
        hand_w, auto_w = times["warm"]
        sweeps_s = auto_w - auto.probe_seconds_
        lines.append(
            f"| {name} | {hand_w / hand.n_iter_ * 1e3:.2f} | {sweeps_s / auto.n_iter_ * 1e3:.2f} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
