"""The same models fitted two ways: closed-form CAVI (``pyro_vae.cavi``) and mean-field SVI on
their Pyro versions (``models/``), with the exact log-evidence where it can be computed.

``python benchmarks/cavi_vs_svi.py`` writes ``benchmarks/cavi_vs_svi.md`` (``--quick``:
tiny sizes and few steps, for the smoke test). Every number is a lower bound on log p(data)
(log Z for the Ising model) in nats except the "exact" column; SVI's ELBO is re-estimated
after fitting from fresh draws, with its Monte Carlo standard error. Families:

- regression: CAVI q(w) q(τ) vs. SVI ``AutoNormal`` / ``AutoMultivariateNormal`` on (w, log τ);
- mixture: CAVI q(z) q(π) Π q(μ_k, Λ_k) vs. SVI ``AutoNormal`` on (π, Bartlett(Λ), μ) with
  z summed out by enumeration (``enum``); both start from k-means;
- Ising: both the naive mean field Π_i q(s_i) (SVI: ``AutoDiscreteMeanField`` + ``score``
  with leave-one-out), at three temperatures;
- factorial HMM: CAVI structured and naive mean field vs. SVI naive mean field (``score``),
  and the exact log p(Y) from enumeration under ``TraceEnum_ELBO``.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
from report_common import output_file
from sklearn.cluster import KMeans

from models.gmm import GaussianMixtureModel
from models.hmm import FactorialHMMModel
from models.ising import IsingModel
from models.regression import BayesianRegression
from pyro_vae import TensorData, TrainConfig, elbo_estimate, fit
from pyro_vae.cavi import (
    BayesianGaussianMixture,
    BayesianLinearRegression,
    FactorialHMM,
    IsingMeanField,
    NaiveMeanField,
    StructuredMeanField,
    grid_couplings,
    ising_log_partition_exact,
)
from pyro_vae.estimators import get
from pyro_vae.guides import AutoDiscreteMeanField, EmptyGuide

HERE = Path(__file__).parent


def timed(f):
    start = time.perf_counter()
    out = f()
    return out, time.perf_counter() - start


def svi(model, guide, data, estimator, steps, lr, draws):
    config = TrainConfig(
        epochs=steps,
        batch_size=10**9,
        lr=lr,
        patience=None,
        progress=False,
        validate_every=steps,
        seed=0,
    )
    _, seconds = timed(lambda: fit(model, guide, data, estimator, config))
    elbo, stderr = elbo_estimate(model, guide, *data.tensors, num_samples=draws)
    return elbo, stderr, seconds


def regression_rows(quick):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 3, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.5 * torch.randn(200, generator=g)
    cavi, seconds = timed(lambda: BayesianLinearRegression().fit(X, y))
    rows = []
    for family in (AutoNormal, AutoMultivariateNormal):
        model = BayesianRegression()
        elbo, stderr, svi_seconds = svi(
            model,
            family(model),
            TensorData(X, y),
            get("trace", num_particles=8, vectorize_particles=True),
            100 if quick else 3000,
            0.02,
            200 if quick else 10000,
        )
        rows.append(
            (
                "regression, N=200, D=3",
                cavi.log_evidence_,
                cavi.lower_bound_,
                seconds,
                f"`{family.__name__}`, `trace`",
                elbo,
                stderr,
                svi_seconds,
            )
        )
    return rows


def mixture_rows(quick):
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    X = np.concatenate([rng.normal(c, 1.0, size=(100, 2)) for c in centres]).astype(np.float32)
    cavi, seconds = timed(
        lambda: BayesianGaussianMixture(3, random_state=0, max_iter=500, tol=1e-8).fit(X)
    )
    km = KMeans(3, n_init=1, random_state=0).fit(X)
    covariances = np.stack([np.cov(X[km.labels_ == j].T) for j in range(3)])
    Xt = torch.from_numpy(X)
    model = GaussianMixtureModel.from_data(Xt, 3)
    elbo, stderr, svi_seconds = svi(
        model,
        model.make_guide(km.cluster_centers_, covariances),
        TensorData(Xt),
        get("enum", num_particles=4, vectorize_particles=True),
        50 if quick else 1000,
        0.01,
        100 if quick else 4000,
    )
    return [
        (
            "mixture, N=300, K=3, D=2",
            None,
            cavi.lower_bound_,
            seconds,
            "`AutoNormal`, `enum`",
            elbo,
            stderr,
            svi_seconds,
        )
    ]


def ising_rows(quick):
    side = 3 if quick else 4
    J, h = grid_couplings(side, side), torch.full((side * side,), 0.1)
    rows = []
    for beta in (0.2, 0.4, 0.6):
        exact = ising_log_partition_exact(J, h, beta)
        cavi, seconds = timed(
            lambda b=beta: IsingMeanField(beta=b, n_init=5, random_state=0).fit(J, h)
        )
        model = IsingModel(J, h, beta)
        elbo, stderr, svi_seconds = svi(
            model,
            AutoDiscreteMeanField(model),
            TensorData(),
            get("score", control_variate="leave-one-out", num_particles=16),
            100 if quick else 2000,
            0.05,
            1000 if quick else 20000,
        )
        rows.append(
            (
                f"Ising {side}x{side}, β={beta}, h=0.1",
                exact,
                cavi.lower_bound_,
                seconds,
                "`AutoDiscreteMeanField`, `score` (LOO)",
                elbo,
                stderr,
                svi_seconds,
            )
        )
    return rows


def hmm_rows(quick):
    g = torch.Generator().manual_seed(1)
    stay = torch.full((2, 3, 3), 0.1, dtype=torch.float64) + 0.7 * torch.eye(3, dtype=torch.float64)
    params = FactorialHMM(
        log_pi=torch.full((2, 3), 1 / 3, dtype=torch.float64).log(),
        log_A=stay.log(),
        W=2.0 * torch.randn(2, 2, 3, generator=g, dtype=torch.float64),
        C=0.8 * torch.eye(2, dtype=torch.float64),
    )
    t_len = 6 if quick else 20
    _, y = params.sample(t_len, seed=2)
    exact, _ = elbo_estimate(
        FactorialHMMModel(params, enumerate=True), EmptyGuide(), y.float(), num_samples=1
    )
    structured, s_seconds = timed(lambda: StructuredMeanField(params, random_state=0).fit(y))
    naive, n_seconds = timed(lambda: NaiveMeanField(params, random_state=0).fit(y))
    model = FactorialHMMModel(params)
    elbo, stderr, svi_seconds = svi(
        model,
        AutoDiscreteMeanField(model),
        TensorData(y.float()),
        get("score", control_variate="leave-one-out", num_particles=16),
        50 if quick else 1500,
        0.1,
        200 if quick else 4000,
    )
    name = f"factorial HMM, M=2, K=3, T={t_len}"
    return [
        (
            name + " (structured MF)",
            exact,
            structured.lower_bound_,
            s_seconds,
            "",
            None,
            None,
            None,
        ),
        (
            name + " (naive MF)",
            exact,
            naive.lower_bound_,
            n_seconds,
            "`AutoDiscreteMeanField`, `score` (LOO)",
            elbo,
            stderr,
            svi_seconds,
        ),
    ]


def fmt(value, digits=3):
    return "" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--out", type=output_file, default=HERE / "cavi_vs_svi.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    rows = []
    for make in (regression_rows, mixture_rows, ising_rows, hmm_rows):
        rows += make(args.quick)
        print(rows[-1])
    lines = [
        "# CAVI and mean-field SVI on the same models",
        "",
        f"`python benchmarks/cavi_vs_svi.py{' --quick' if args.quick else ''}` on "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"pyro {pyro.__version__}, 1 thread. Nats; every bound ≤ the exact value.",
        "",
        "| model | exact log p | CAVI bound | CAVI s | SVI guide, estimator | SVI ELBO ± se "
        "| SVI s |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for name, exact, bound, seconds, family, elbo, stderr, svi_seconds in rows:
        svi_cell = "" if elbo is None else f"{elbo:.3f} ± {stderr:.3f}"
        lines.append(
            f"| {name} | {fmt(exact)} | {fmt(bound)} | {fmt(seconds, 2)} | {family} | "
            f"{svi_cell} | {fmt(svi_seconds, 1)} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
