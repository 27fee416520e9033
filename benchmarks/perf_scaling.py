"""Scaling: seconds per epoch and memory as the data grow, for ``fit`` and for ``pyro_vae.cavi``.

``fit`` runs in a fresh process per training-set size (``perf_epoch.py --no-eval``), so each
peak is its own. ``python benchmarks/perf_scaling.py --cavi N --json OUT`` fits
``pyro_vae.cavi.BayesianGaussianMixture`` (K = 5, the data of ``benchmarks/cavi.py``) to N
points in this process and writes its seconds, iterations and memory. Memory is reported
as the resident set at the start of the run (interpreter, libraries, the data) and the
peak above it while fitting: the working set that must stay flat as N grows.
"""

from __future__ import annotations

import argparse
import json
import time

from cavi import data as mixture_data
from perf_common import PeakRSS, set_threads
from report_common import output_file

from pyro_vae.cavi import BayesianGaussianMixture


def cavi_worker(n: int, threads: int) -> dict:
    set_threads(threads)
    x = mixture_data(n)
    with PeakRSS() as rss:
        started = time.perf_counter()
        fitted = BayesianGaussianMixture(n_components=5, tol=1e-3, max_iter=200, random_state=0)
        fitted.fit(x)
        seconds = time.perf_counter() - started
    return {
        "n": n,
        "seconds": seconds,
        "iterations": int(fitted.n_iter_),
        "data_mb": x.nbytes / 2**20,
        "rss_before_mb": rss.start,
        "peak_rss_mb": rss.peak,
    }


def fit_markdown(rows: list[dict]) -> list[str]:
    lines = [
        "| training images | s/epoch (median) | s per 1,000 images | data MB | RSS at start MB "
        "| peak RSS while training MB | working set above start MB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        per_epoch = sorted(r["seconds"])[len(r["seconds"]) // 2]
        lines.append(
            f"| {r['num_train']:,} | {per_epoch:.3f} | {1000 * per_epoch / r['num_train']:.4f} "
            f"| {r['train_data_mb']:.1f} | {r['rss_before_training_mb']:.0f} "
            f"| {r['peak_rss_training_mb']:.0f} "
            f"| {r['peak_rss_training_mb'] - r['rss_before_training_mb']:.0f} |"
        )
    return lines


def cavi_markdown(rows: list[dict]) -> list[str]:
    lines = [
        "| points | seconds | iterations | s per iteration | s per iteration per 10^6 points "
        "| data MB | RSS at start MB | peak RSS while fitting MB | working set above start MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        per_iter = r["seconds"] / max(1, r["iterations"])
        lines.append(
            f"| {r['n']:,} | {r['seconds']:.3f} | {r['iterations']} | {per_iter:.4f} "
            f"| {1e6 * per_iter / r['n']:.3f} | {r['data_mb']:.1f} | {r['rss_before_mb']:.0f} "
            f"| {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - r['rss_before_mb']:.0f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cavi", type=int, required=True, help="number of points")
    parser.add_argument("--json", type=output_file, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    args.json.write_text(json.dumps(cavi_worker(args.cavi, args.threads)))


if __name__ == "__main__":
    main()
