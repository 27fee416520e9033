"""AutoCAVI on ARD regression: the grid probe against the dense one, VB written out, scikit-learn.

``python benchmarks/autocavi_ard.py`` writes ``benchmarks/autocavi_ard.md``. Automatic
relevance determination (Bishop & Tipping 2000): α_d ~ Gamma(10⁻², 10⁻²), w ~ N(0,
diag(α)⁻¹), τ ~ Gamma(10⁻², 10⁻²), y ~ N(Xw, τ⁻¹ I), N = 100 rows of D standard normal
features (``--dims``), a third of them relevant. For each D:

- mean-field VB q(w) q(α) q(τ) written out in PyTorch (:func:`written_out`, the updates of
  Bishop & Tipping 2000 §3), from the priors' means, to a bound change below 10⁻¹⁰ nats;
- ``AutoCAVI`` on the Pyro model below, to the same stopping rule: the weight prior's
  (1 + D + D(D + 1)/2)(1 + 2D) coefficients probed on a grid and solved one latent at a
  time (``pyro_vae/cavi/kronecker_probe.py``, the default), and, up to ``--dense-up-to``,
  probed at random points and solved by one dense least-squares solve (as before the
  grid; refused beyond 20,000 coefficients, D = 25);
- scikit-learn's ``ARDRegression``, which maximizes the evidence over α (type-II maximum
  likelihood, MacKay 1992; Tipping 2001) rather than bounding it: a different estimator of
  the same model, shown for its time and for the largest gap between its weights and
  E_q[w].

Times are wall seconds of one fit after a first one of the smallest D (lazy
initialization), 1 thread; bounds are whole-data ELBOs in nats; "gap" is |AutoCAVI's bound −
the written-out one| relative to the written-out one.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from report_common import machine_footer, output_file, write_report
from sklearn.linear_model import ARDRegression

import pyro_vae.cavi.kronecker_probe as kronecker_probe
from pyro_vae.cavi import AutoCAVI

HERE = Path(__file__).parent
F64 = torch.float64
N, PRIOR, TOL = 100, 1e-2, 1e-10


def data(d: int):
    g = torch.Generator().manual_seed(d)
    X = torch.randn(N, d, generator=g, dtype=F64)
    truth = torch.zeros(d, dtype=F64)
    relevant = max(1, d // 3)
    truth[:relevant] = 2 * torch.randn(relevant, generator=g, dtype=F64)
    return X, X @ truth + 0.5 * torch.randn(N, generator=g, dtype=F64)


def ard_model(d: int):
    def model(X, y):
        prior = X.new_tensor(PRIOR)
        alpha = pyro.sample("alpha", dist.Gamma(prior, prior).expand([d]).to_event(1))
        tau = pyro.sample("tau", dist.Gamma(prior, prior))
        w = pyro.sample("w", dist.Normal(X.new_zeros(d), alpha.rsqrt()).to_event(1))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(X @ w, tau.rsqrt()), obs=y)

    return model


def written_out(X, y, tol=TOL, max_iter=100_000):
    """Mean-field VB for ARD regression: (ELBO in nats, E_q[w], sweeps)."""
    n, d = X.shape
    xtx, xty = X.T @ X, X.T @ y
    a = torch.full((d,), PRIOR + 0.5, dtype=F64)
    b, c, e = torch.full((d,), PRIOR, dtype=F64), PRIOR + n / 2, torch.tensor(PRIOR, dtype=F64)
    expected_alpha, expected_tau, last = (
        torch.ones(d, dtype=F64),
        torch.tensor(1.0, dtype=F64),
        None,
    )
    log_2pi = math.log(2 * math.pi)
    for sweep in range(1, max_iter + 1):
        cov = torch.linalg.inv(torch.diag(expected_alpha) + expected_tau * xtx)
        mean = expected_tau * cov @ xty
        second = mean**2 + cov.diagonal()
        residual = ((y - X @ mean) ** 2).sum() + (xtx * cov).sum()
        e = PRIOR + residual / 2
        b = PRIOR + second / 2
        expected_alpha, expected_tau = a / b, c / e
        log_alpha = torch.digamma(a) - b.log()
        log_tau = torch.digamma(torch.tensor(c, dtype=F64)) - e.log()
        bound = n / 2 * (log_tau - log_2pi) - expected_tau * residual / 2
        bound += (log_alpha / 2 - log_2pi / 2 - expected_alpha * second / 2).sum()
        gamma_prior = PRIOR * math.log(PRIOR) - math.lgamma(PRIOR)
        bound += (gamma_prior + (PRIOR - 1) * log_alpha - PRIOR * expected_alpha).sum()
        bound += gamma_prior + (PRIOR - 1) * log_tau - PRIOR * expected_tau
        bound += torch.logdet(2 * math.pi * math.e * cov) / 2
        bound += (
            dist.Gamma(a, b).entropy().sum() + dist.Gamma(torch.tensor(c, dtype=F64), e).entropy()
        )
        bound = float(bound)
        if last is not None and abs(bound - last) < tol:
            return bound, mean, sweep
        last = bound
    return last, mean, max_iter


def timed(call):
    start = time.perf_counter()
    out = call()
    return out, time.perf_counter() - start


def auto_fit(d, X, y, dense: bool):
    """AutoCAVI's fit, probed on a grid or (``dense``) at random points, one dense solve."""
    saved = kronecker_probe.MIN_BASIS
    kronecker_probe.MIN_BASIS = math.inf if dense else saved
    try:
        return timed(lambda: AutoCAVI(ard_model(d), tol=TOL, max_iter=2000).fit(X, y))
    finally:
        kronecker_probe.MIN_BASIS = saved


def row(d: int, dense_up_to: int) -> str:
    X, y = data(d)
    (bound, mean, sweeps), hand_s = timed(lambda: written_out(X, y))
    fit, auto_s = auto_fit(d, X, y, dense=False)
    gap = abs(fit.lower_bound_ - bound) / abs(bound)
    dense = "refused" if d >= 25 else "—"
    if d <= dense_up_to and d < 25:
        dense_fit, dense_s = auto_fit(d, X, y, dense=True)
        dense = f"{dense_s:.2f} ({dense_fit.probe_seconds_:.2f})"
    sk, sk_s = timed(lambda: ARDRegression(max_iter=1000, tol=1e-8).fit(X.numpy(), y.numpy()))
    sk_gap = float((torch.from_numpy(sk.coef_) - mean).abs().max())
    w_mean = fit.variational_distributions()["w"].mean
    sizes = [1 + d + d * (d + 1) // 2, 1 + 2 * d]  # w's statistics, α's
    points = math.prod(kronecker_probe.axis_count(size) for size in sizes)
    points = f"{points:,}" if math.prod(sizes) >= kronecker_probe.MIN_BASIS else "— (dense)"
    return (
        f"| {d} | {math.prod(sizes):,} | {points} | {hand_s * 1e3:.1f} | {sweeps} | "
        f"{auto_s:.2f} ({fit.probe_seconds_:.2f}) | {fit.n_iter_} | {dense} | "
        f"{sk_s * 1e3:.1f} | {bound:.6f} | {fit.lower_bound_:.6f} | {gap:.1e} | "
        f"{float((w_mean - mean).abs().max()):.1e} | {sk_gap:.2f} |"
    )


def dims(text: str) -> list[int]:
    """``--dims``: comma-separated feature counts from 1 to 60 (AutoCAVI refuses ARD above)."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated integers") from None
    if not values or any(not 1 <= d <= 60 for d in values):
        raise argparse.ArgumentTypeError(f"{text!r}: each D must be from 1 to 60")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", type=dims, default=[5, 10, 15, 20, 30, 40, 60])
    parser.add_argument("--dense-up-to", type=int, default=20)
    parser.add_argument("--out", type=output_file, default=HERE / "autocavi_ard.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    loads, start = (f"{os.getloadavg()[0]:.2f}",), time.perf_counter()
    auto_fit(min(args.dims), *data(min(args.dims)), dense=False)  # warm-up
    rows = [row(d, args.dense_up_to) for d in args.dims]
    loads += (f"{os.getloadavg()[0]:.2f}",)
    write_report(args.out, [
        "# AutoCAVI on ARD regression: grid probe, dense probe, VB written out, scikit-learn",
        "",
        f"`python benchmarks/autocavi_ard.py`: N = {N}, α_d, τ ~ Gamma({PRIOR}, {PRIOR}), every "
        f"fit to a bound change below {TOL:g} nats; seconds or ms of wall time, 1 thread, "
        "one fit each (AutoCAVI's probing in brackets); bounds in nats. The weight prior has "
        "the coefficients shown, probed at the grid's points (one batched model run).",
        "",
        "| D | weight prior's coefficients | grid points | written-out VB ms | its sweeps "
        "| AutoCAVI s (probing) | its sweeps | AutoCAVI, dense probe s (probing) "
        "| scikit-learn ARDRegression ms | written-out bound | AutoCAVI bound | gap "
        "| max abs E_q[w] − written-out | max abs sklearn coef − E_q[w] |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        machine_footer(loads, time.perf_counter() - start),
        "",
    ])  # fmt: skip


if __name__ == "__main__":
    main()
