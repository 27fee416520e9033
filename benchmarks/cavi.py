"""pyro_vae's CAVI Gaussian mixture against scikit-learn's, side by side, 10^4 to 10^6 points.

``python benchmarks/cavi.py`` writes ``benchmarks/cavi.md``. Data: K = 5 well-separated
2-D Gaussian clusters. Both fit ``BayesianGaussianMixture(n_components=5)`` with the same
(default) priors, tol and max_iter, from their k-means initializations, interleaved in one
process, median of ``--repeats`` runs. Reported: seconds, iterations, the largest gap
between the fitted means (after matching components), and our ELBO (a true lower bound on
log p(X); scikit-learn's ``lower_bound_`` omits constants, so it is not comparable).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import sklearn
import torch
from report_common import output_file, positive_int
from sklearn.mixture import BayesianGaussianMixture as SklearnBGM

from pyro_vae.cavi import BayesianGaussianMixture

HERE = Path(__file__).parent
CENTERS = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0], [8.0, 8.0], [4.0, 16.0]])


def data(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CENTERS), n)
    return CENTERS[labels] + rng.normal(size=(n, 2)) * np.array([1.0, 0.6])


def _sklearn_threads() -> str:
    """The BLAS and OpenMP thread pools scikit-learn's NumPy runs on, from threadpoolctl
    (a scikit-learn dependency): the speed-up is only fair at equal threads."""
    from threadpoolctl import threadpool_info

    pools = {f"{p['user_api']} {p['num_threads']}" for p in threadpool_info()}
    return "threads: " + ", ".join(sorted(pools)) if pools else "no thread pools found"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=[10**4, 10**5, 10**6])
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--out", type=output_file, default=HERE / "cavi.md")
    args = parser.parse_args()
    settings = dict(n_components=5, tol=1e-3, max_iter=200, random_state=0)
    lines = [
        "# Bayesian Gaussian mixture: CAVI in pyro_vae vs. scikit-learn",
        "",
        f"Written by `python benchmarks/cavi.py` on {platform.platform()}, "
        f"{torch.get_num_threads()} torch threads; scikit-learn {sklearn.__version__} "
        f"({_sklearn_threads()}), "
        f"torch {torch.__version__}. 2-D, K = 5, tol 1e-3, median of {args.repeats}.",
        "",
        "| points | scikit-learn s | pyro_vae s | speed-up | iterations (sk / ours) "
        "| max mean gap | our ELBO per point |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in args.sizes:
        X = data(n)
        times = {"sk": [], "ours": []}
        for _ in range(args.repeats):  # interleaved
            started = time.perf_counter()
            sk = SklearnBGM(
                weight_concentration_prior_type="dirichlet_distribution", **settings
            ).fit(X)
            times["sk"].append(time.perf_counter() - started)
            started = time.perf_counter()
            ours = BayesianGaussianMixture(**settings).fit(X)
            times["ours"].append(time.perf_counter() - started)
        order_sk = np.argsort(sk.means_ @ np.array([1.0, 100.0]))
        order_ours = np.argsort(ours.means_.numpy() @ np.array([1.0, 100.0]))
        gap = np.abs(sk.means_[order_sk] - ours.means_.numpy()[order_ours]).max()
        t_sk, t_ours = statistics.median(times["sk"]), statistics.median(times["ours"])
        lines.append(
            f"| {n:,} | {t_sk:.2f} | {t_ours:.2f} | {t_sk / t_ours:.2f}x | "
            f"{sk.n_iter_} / {ours.n_iter_} | {gap:.1e} | {ours.lower_bound_ / n:.4f} |"
        )
        print(lines[-1], flush=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
