"""AutoCAVI on a mixed model (fixed effects, random intercepts) against CAVI written by hand.

``python benchmarks/autocavi_random_effects.py`` writes ``benchmarks/autocavi_random_effects.md``:
y_n = x_n·w + a[g_n] + ε_n with w ~ N(0, 4 I₃), a_g ~ N(0, 9) for G = 100 groups,
ε_n ~ N(0, 1/τ), τ ~ Gamma(2, 1), on N = 1,000 to 100,000 rows (``--sizes``). Three fits of
the same mean field q(w) q(a) q(τ), to the same stopping rule (a sweep's bound change below
1e-8 nats):

- the closed-form updates written out in PyTorch (:func:`hand_written`; Bishop 2006,
  §10.1–10.3, with each group's sums taken by ``index_add``), from q(τ) at its prior;
- ``AutoCAVI`` on the Pyro model below, which reads ``a[..., group]`` through the index it
  finds by probing (``pyro_vae/cavi/data_indexing.py``), from the same q(τ);
- one plain Pyro run of the model (``poutine.trace`` and every log-density): the floor
  under anything that runs the model.

Times are the least of ``--repeats`` calls after a first one, 1 thread, wall time. Bounds
are whole-data ELBOs in nats; "gap" is |AutoCAVI's bound − the hand-written one|.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from report_common import fastest_of, output_file

from pyro_vae.cavi import AutoCAVI

HERE = Path(__file__).parent
F64 = torch.float64
G, D = 100, 3
A0, B0, PRIOR_W, PRIOR_A = 2.0, 1.0, 4.0, 9.0  # τ ~ Gamma(A0, B0); Var w, Var a


def data(n: int):
    g = torch.Generator().manual_seed(0)
    group = torch.randint(0, G, (n,), generator=g)
    X = torch.randn(n, D, generator=g, dtype=F64)
    a = 2.0 * torch.randn(G, generator=g, dtype=F64)
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=F64) + a[group]
    return X, group, y + 0.7 * torch.randn(n, generator=g, dtype=F64)


def model(X, group, y):
    w = pyro.sample("w", dist.MultivariateNormal(X.new_zeros(D), PRIOR_W * torch.eye(D, dtype=F64)))
    with pyro.plate("groups", G):
        a = pyro.sample("a", dist.Normal(X.new_tensor(0.0), X.new_tensor(PRIOR_A).sqrt()))
    tau = pyro.sample("tau", dist.Gamma(X.new_tensor(A0), X.new_tensor(B0)))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal((X * w).sum(-1) + a[..., group], tau.rsqrt()), obs=y)


def hand_written(X, group, y, tol=1e-8, max_iter=1000):
    """Mean-field CAVI for :func:`model`, updating q(w), q(a), q(τ) in turn: (bound, sweeps)."""
    n = len(y)
    xtx = X.T @ X
    counts = torch.bincount(group, minlength=G).to(F64)
    alpha, beta = A0, B0  # q(τ) starts at its prior, as AutoCAVI is told to
    m_a, v_a = torch.zeros(G, dtype=F64), torch.full((G,), PRIOR_A, dtype=F64)
    bounds = []
    for _ in range(max_iter):
        e_tau = alpha / beta
        precision_w = torch.eye(D, dtype=F64) / PRIOR_W + e_tau * xtx
        cov_w = torch.linalg.inv(precision_w)
        m_w = cov_w @ (e_tau * (X.T @ (y - m_a[group])))
        residual = y - X @ m_w
        precision_a = 1 / PRIOR_A + e_tau * counts
        m_a = e_tau * torch.zeros(G, dtype=F64).index_add_(0, group, residual) / precision_a
        v_a = 1 / precision_a
        square = float(((residual - m_a[group]) ** 2).sum() + (xtx * cov_w).sum())
        square += float((counts * v_a).sum())
        alpha, beta = A0 + n / 2, B0 + square / 2
        bounds.append(_bound(n, m_w, cov_w, m_a, v_a, alpha, beta, square))
        if len(bounds) > 1 and abs(bounds[-1] - bounds[-2]) < tol:  # AutoCAVI's rule
            break
    return bounds[-1], len(bounds)


def _bound(n, m_w, cov_w, m_a, v_a, alpha, beta, square) -> float:
    """E_q[log p(y, w, a, τ)] + H[q], in nats."""
    e_tau, e_log_tau = (
        alpha / beta,
        float(torch.digamma(torch.tensor(alpha, dtype=F64))) - math.log(beta),
    )
    likelihood = n / 2 * (e_log_tau - math.log(2 * math.pi)) - e_tau / 2 * square
    prior_w = -D / 2 * math.log(2 * math.pi * PRIOR_W)
    prior_w -= float(m_w @ m_w + torch.trace(cov_w)) / (2 * PRIOR_W)
    entropy_w = D / 2 * math.log(2 * math.pi * math.e) + float(torch.logdet(cov_w)) / 2
    prior_a = -G / 2 * math.log(2 * math.pi * PRIOR_A) - float((m_a**2 + v_a).sum()) / (2 * PRIOR_A)
    entropy_a = float((0.5 * torch.log(2 * math.pi * math.e * v_a)).sum())
    prior_tau = A0 * math.log(B0) - math.lgamma(A0) + (A0 - 1) * e_log_tau - B0 * e_tau
    entropy_tau = float(
        dist.Gamma(torch.tensor(alpha, dtype=F64), torch.tensor(beta, dtype=F64)).entropy()
    )
    return (likelihood + prior_w + entropy_w + prior_a + entropy_a + prior_tau
            + entropy_tau)  # fmt: skip


def auto(X, group, y):
    start = {"tau": dist.Gamma(torch.tensor(A0, dtype=F64), torch.tensor(B0, dtype=F64))}
    return AutoCAVI(model, init=start, tol=1e-8, max_iter=1000).fit(X, group, y)


def plain_run(X, group, y):
    with pyro.validation_enabled(False):
        trace = poutine.trace(model).get_trace(X, group, y)
        trace.compute_log_prob()


def row(n: int, repeats: int) -> str:
    X, group, y = data(n)
    (hand_bound, hand_sweeps), hand_s = fastest_of(lambda: hand_written(X, group, y), repeats)
    fit, auto_s = fastest_of(lambda: auto(X, group, y), repeats)
    _, plain_s = fastest_of(lambda: plain_run(X, group, y), repeats)
    gap = abs(fit.lower_bound_ - hand_bound)
    return (
        f"| {n:,} | {hand_sweeps} | {hand_s * 1e3:.1f} | {fit.n_iter_} | {auto_s * 1e3:.1f} | "
        f"{fit.probe_seconds_ * 1e3:.1f} | {plain_s * 1e3:.2f} | {auto_s / hand_s:.1f} | "
        f"{auto_s / plain_s:.1f} | {hand_bound:.3f} | {gap:.1e} |"
    )


def sizes(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < G:
        raise argparse.ArgumentTypeError(
            f"--sizes: {text!r} is not a comma-separated list of row counts of at least "
            f"G = {G} (one row a group, at least)"
        )
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=sizes, default=[1_000, 10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=output_file, default=HERE / "autocavi_random_effects.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    rows = [row(n, args.repeats) for n in args.sizes]
    load_after = os.getloadavg()[0]
    text = "\n".join([
        "# AutoCAVI on a mixed model against CAVI written by hand",
        "",
        f"`python benchmarks/autocavi_random_effects.py` on "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, pyro "
        f"{pyro.__version__}, 1 thread, load average {load_before:.2f} before and "
        f"{load_after:.2f} after ({os.cpu_count()} cores). G = {G} groups, D = {D} fixed "
        "effects; ms of wall time (the least of "
        f"{args.repeats} calls after a first); bounds in nats.",
        "",
        "| N | hand-written sweeps | hand-written ms | AutoCAVI sweeps | AutoCAVI ms | "
        "of which probing ms | plain model run ms | AutoCAVI / hand | AutoCAVI / plain run "
        "| bound | gap |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ])  # fmt: skip
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
