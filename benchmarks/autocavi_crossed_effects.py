"""Crossed random effects: mean-field CAVI's slow sweeps, and AutoCAVI's over-relaxed ones.

``python benchmarks/autocavi_crossed_effects.py`` writes
``benchmarks/autocavi_crossed_effects.md``: subjects × items, the design of
psycholinguistics' mixed models (lme4's ``y ~ 1 + (1|subject) + (1|item)``),
y_n = μ + a[subject_n] + b[item_n] + ε_n with μ ~ N(0, 10²), a_s ~ N(0, 1), b_i ~ N(0, 1),
ε_n ~ N(0, 1/τ), τ ~ Gamma(2, 1). μ, a and b are confounded (a shift of μ against the a's
and b's barely moves the likelihood), so mean field's coordinate ascent, block Gauss-Seidel
on the posterior means, crawls. Four fits of the same q(μ) q(a) q(τ) q(b), each to its own
stopping rule (a sweep's bound change below ``--tol`` nats), from the priors:

- the closed-form updates written out in PyTorch (:func:`hand_written`; Bishop 2006,
  §10.1, each group's sums taken by ``index_add``): what one writes by hand;
- ``AutoCAVI(overrelax=False)`` on the Pyro model below: the same sweeps, through the
  index it finds by probing;
- ``AutoCAVI`` as it runs by default, with adaptive over-relaxed steps between sweeps
  (``pyro_vae/cavi/overrelaxation.py``; Salakhutdinov & Roweis 2003);
- the written-out sweeps to tol 1e-13 (at most 10⁵ sweeps): the reference optimum each
  "short by" is measured from (all four are mean field's bound, so none may exceed it by
  more than rounding).

One call each, 1 thread, wall time (a plain AutoCAVI fit can take minutes). Bounds are
whole-data ELBOs in nats.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
import warnings
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from report_common import output_file
from sklearn.exceptions import ConvergenceWarning

from pyro_vae.cavi import AutoCAVI

HERE = Path(__file__).parent
F64 = torch.float64
A0, B0, PRIOR_MU = 2.0, 1.0, 100.0  # τ ~ Gamma(A0, B0); Var μ; Var a = Var b = 1


def data(subjects: int, items: int, per_pair: int):
    """``per_pair`` responses for every (subject, item) pair, in a shuffled order."""
    g = torch.Generator().manual_seed(0)
    subject = torch.arange(subjects).repeat_interleave(items * per_pair)
    item = torch.arange(items).repeat_interleave(per_pair).repeat(subjects)
    order = torch.randperm(len(subject), generator=g)
    subject, item = subject[order], item[order]
    a = torch.randn(subjects, generator=g, dtype=F64)
    b = 0.7 * torch.randn(items, generator=g, dtype=F64)
    y = 3.0 + a[subject] + b[item] + 0.5 * torch.randn(len(subject), generator=g, dtype=F64)
    return subject, item, y, subjects, items


def model(subject, item, y, subjects, items):
    mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), y.new_tensor(PRIOR_MU).sqrt()))
    with pyro.plate("subjects", subjects):
        a = pyro.sample("a", dist.Normal(y.new_tensor(0.0), y.new_tensor(1.0)))
    with pyro.plate("items", items):
        b = pyro.sample("b", dist.Normal(y.new_tensor(0.0), y.new_tensor(1.0)))
    tau = pyro.sample("tau", dist.Gamma(y.new_tensor(A0), y.new_tensor(B0)))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu + a[..., subject] + b[..., item], tau.rsqrt()), obs=y)


def hand_written(subject, item, y, subjects, items, tol, max_iter):
    """Mean-field CAVI for :func:`model`, updating q(μ), q(a), q(b), q(τ) in turn from the
    priors: (bound after the last sweep, sweeps)."""
    n = len(y)
    n_a = torch.bincount(subject, minlength=subjects).to(F64)
    n_b = torch.bincount(item, minlength=items).to(F64)
    m_a, m_b = torch.zeros(subjects, dtype=F64), torch.zeros(items, dtype=F64)
    alpha, beta = A0, B0
    bounds = []
    for _ in range(max_iter):
        e = alpha / beta
        p_mu = 1 / PRIOR_MU + e * n
        m_mu, v_mu = e * float((y - m_a[subject] - m_b[item]).sum()) / p_mu, 1 / p_mu
        p_a = 1 + e * n_a
        m_a = e * torch.zeros(subjects, dtype=F64).index_add_(0, subject, y - m_mu - m_b[item])
        m_a, v_a = m_a / p_a, 1 / p_a
        p_b = 1 + e * n_b
        m_b = e * torch.zeros(items, dtype=F64).index_add_(0, item, y - m_mu - m_a[subject])
        m_b, v_b = m_b / p_b, 1 / p_b
        square = float(((y - m_mu - m_a[subject] - m_b[item]) ** 2).sum())
        square += n * v_mu + float((n_a * v_a).sum() + (n_b * v_b).sum())
        alpha, beta = A0 + n / 2, B0 + square / 2
        bounds.append(_bound(n, (m_mu, v_mu), (m_a, v_a), (m_b, v_b), alpha, beta, square))
        if len(bounds) > 1 and abs(bounds[-1] - bounds[-2]) < tol:  # AutoCAVI's rule
            break
    return bounds[-1], len(bounds)


def _bound(n, mu, a, b, alpha, beta, square) -> float:
    """E_q[log p(y, μ, a, b, τ)] + H[q], in nats."""
    e_tau = alpha / beta
    e_log_tau = float(torch.digamma(torch.tensor(alpha, dtype=F64))) - math.log(beta)
    total = n / 2 * (e_log_tau - math.log(2 * math.pi)) - e_tau / 2 * square
    m_mu, v_mu = mu
    total += -0.5 * math.log(2 * math.pi * PRIOR_MU) - (m_mu**2 + v_mu) / (2 * PRIOR_MU)
    total += 0.5 * math.log(2 * math.pi * math.e * v_mu)
    for m, v in (a, b):  # N(0, 1) priors, Normal q's
        total += float((-0.5 * math.log(2 * math.pi) - (m**2 + v) / 2).sum())
        total += float((0.5 * torch.log(2 * math.pi * math.e * v)).sum())
    total += A0 * math.log(B0) - math.lgamma(A0) + (A0 - 1) * e_log_tau - B0 * e_tau
    q_tau = dist.Gamma(torch.tensor(alpha, dtype=F64), torch.tensor(beta, dtype=F64))
    return total + float(q_tau.entropy())


def timed(f):
    start = time.perf_counter()
    out = f()
    return out, time.perf_counter() - start


def auto(args, overrelax: bool, tol: float, max_iter: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a plain fit may run out
        fit = AutoCAVI(model, tol=tol, max_iter=max_iter, overrelax=overrelax).fit(*args)
    return fit


def rows(shape: tuple[int, int, int], tol: float, max_iter: int) -> list[str]:
    args = data(*shape)
    n = len(args[2])
    reference, ref_sweeps = hand_written(*args, tol=1e-13, max_iter=100_000)
    (hand_bound, hand_sweeps), hand_s = timed(lambda: hand_written(*args, tol, max_iter))
    plain, plain_s = timed(lambda: auto(args, False, tol, max_iter))
    fast, fast_s = timed(lambda: auto(args, True, tol, max_iter))
    label = f"{n:,} ({shape[0]} × {shape[1]})"

    def line(method, sweeps, converged, seconds, bound, probing=None):
        return (
            f"| {label} | {method} | {sweeps}{'' if converged else ' (max_iter)'} | "
            f"{seconds:.2f} | {'' if probing is None else f'{probing:.2f}'} | "
            f"{'' if probing is None else f'{(seconds - probing) / sweeps * 1e3:.2f}'} | "
            f"{bound:.6f} | {reference - bound:.1e} |"
        )

    return [
        line("written out", hand_sweeps, hand_sweeps < max_iter, hand_s, hand_bound, 0.0),
        line("AutoCAVI, plain sweeps", plain.n_iter_, plain.converged_, plain_s,
             plain.lower_bound_, plain.probe_seconds_),
        line("AutoCAVI, over-relaxed", fast.n_iter_, fast.converged_, fast_s,
             fast.lower_bound_, fast.probe_seconds_),
        f"| {label} | reference: written out to tol 1e-13 | {ref_sweeps} | | | | "
        f"{reference:.6f} | 0 |",
    ]  # fmt: skip


def shapes(text: str) -> list[tuple[int, int, int]]:
    try:
        out = [tuple(int(v) for v in part.split("x")) for part in text.split(",")]
    except ValueError:
        out = []
    if not out or any(len(s) != 3 or min(s) < 1 for s in out):
        raise argparse.ArgumentTypeError(
            f"--shapes: {text!r} is not a comma-separated list of SUBJECTSxITEMSxPER_PAIR "
            "with each at least 1 (e.g. 50x40x1,200x100x1)"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", type=shapes, default=[(50, 40, 1), (200, 100, 1)])
    parser.add_argument("--tol", type=float, default=1e-8, help="each fit's (nats)")
    parser.add_argument("--max-iter", type=int, default=5000)
    parser.add_argument("--out", type=output_file, default=HERE / "autocavi_crossed_effects.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    table = [line for shape in args.shapes for line in rows(shape, args.tol, args.max_iter)]
    load_after = os.getloadavg()[0]
    text = "\n".join([
        "# Crossed random effects: plain and over-relaxed CAVI sweeps",
        "",
        f"`python benchmarks/autocavi_crossed_effects.py` on "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, pyro "
        f"{pyro.__version__}, 1 thread, load average {load_before:.2f} before and "
        f"{load_after:.2f} after ({os.cpu_count()} cores). y = μ + a[subject] + b[item] + ε, "
        f"τ latent; every fit stops when a sweep changes the bound by less than {args.tol:g} "
        f"nats (or at {args.max_iter:,} sweeps); one call each, seconds of wall time (ms a "
        "sweep: the time less probing, over the sweeps; an over-relaxed one includes its "
        "longer step's ELBO); bounds in nats, \"short by\" from the reference.",
        "",
        "| N (subjects × items) | method | sweeps | s | of which probing s | ms a sweep | "
        "bound | short by |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *table,
        "",
    ])  # fmt: skip
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
