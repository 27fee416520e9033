"""AutoCAVI against the hand-written ``BayesianGaussianMixture`` as the data grow.

``python benchmarks/autocavi_scale.py`` writes ``benchmarks/autocavi_scale.md``: a Gaussian
mixture (K = 10 components, D = 5 dims) on N = 3,000, 30,000 and 100,000 points drawn from
10 well-separated Gaussians, fitted by the hand-written class and by ``AutoCAVI`` on
``models/gmm.py``'s Wishart parameterization (the block (means, precisions)), both from
the class's own initial responsibilities (``reg_covar=0``, so both run the same update).
Each fit runs in a fresh Python process (``--one``), so that its peak resident memory
(``ru_maxrss``, which includes the ~0.4 GB of torch and Pyro themselves) is its own; the
time is that one fit's wall time, 1 thread, after the data are made. ``--sizes`` changes N.

The issue's sizes (N = 300) are in ``autocavi.md``; this table is how the two scale, which
a fixed cost of probing the model hides there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import torch
from report_common import output_file

HERE = Path(__file__).parent
K, D = 10, 5


def data(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.normal(0.0, 5.0, size=(K, D))
    return centres[rng.integers(K, size=n)] + rng.normal(size=(n, D))


def data_size(text: str) -> int:
    """An N for ``--sizes``: an integer of at least K (each component needs a point)."""
    try:
        n = int(text)
    except ValueError:
        n = None
    if n is None or n < K:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer of at least K = {K}")
    return n


def one(method: str, n: int) -> dict:
    """Fit one way in this process: its bound, sweeps, seconds (probing apart) and peak
    resident memory."""
    sys.path.insert(0, str(HERE.parent))
    from models.gmm import GaussianMixtureModel
    from pyro_vae.cavi import AutoCAVI, BayesianGaussianMixture

    torch.set_num_threads(1)
    x = data(n)
    settings = dict(random_state=0, max_iter=500, tol=1e-8, reg_covar=0.0)
    reference = BayesianGaussianMixture(K, **settings)
    gen = torch.Generator().manual_seed(int(np.random.default_rng(0).integers(2**31)))
    resp = reference._initial_resp(reference._check(x), gen)
    xt = torch.from_numpy(x)
    model = GaussianMixtureModel.from_data(xt, K, precision_parameterization="wishart").double()
    start = time.perf_counter()
    if method == "hand":
        fit = BayesianGaussianMixture(K, **settings).fit(x)
        probe = 0.0
    else:
        fit = AutoCAVI(model, init={"assignment": resp}, blocks=[("means", "precisions")],
                       tol=1e-8, max_iter=500).fit(xt)  # fmt: skip
        probe = fit.probe_seconds_
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return dict(bound=float(fit.lower_bound_), sweeps=int(fit.n_iter_), seconds=seconds,
                probe=probe, peak_gib=peak)  # fmt: skip


def measured(method: str, n: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--one", method, str(n)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=data_size, nargs="+", default=[3000, 30000, 100000])
    parser.add_argument("--out", type=output_file, default=HERE / "autocavi_scale.md")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]))))
        return
    load_before = os.getloadavg()[0]
    rows = [(n, measured("hand", n), measured("auto", n)) for n in args.sizes]
    load_after = os.getloadavg()[0]
    lines = [
        "# AutoCAVI and the hand-written Gaussian mixture as N grows",
        "",
        f"`python benchmarks/autocavi_scale.py` on {platform.processor() or platform.machine()}"
        f", torch {torch.__version__}, pyro {pyro.__version__}, 1 thread, load average "
        f"{load_before:.2f} before and {load_after:.2f} after ({os.cpu_count()} cores). "
        f"K = {K}, D = {D}; both from the class's initial responsibilities; whole-data ELBOs "
        "in nats; each fit in a fresh process (peak memory includes torch and Pyro, ~0.4 GiB).",
        "",
        "| N | hand-written s | sweeps | peak GiB | AutoCAVI s | of which probing s | sweeps "
        "| peak GiB | AutoCAVI / hand, time | bound (both) | bounds differ by |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, hand, auto in rows:
        lines.append(
            f"| {n:,} | {hand['seconds']:.2f} | {hand['sweeps']} | {hand['peak_gib']:.2f} | "
            f"{auto['seconds']:.2f} | {auto['probe']:.2f} | {auto['sweeps']} | "
            f"{auto['peak_gib']:.2f} | {auto['seconds'] / hand['seconds']:.1f} | "
            f"{hand['bound']:.3f} | {abs(auto['bound'] - hand['bound']):.1e} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
