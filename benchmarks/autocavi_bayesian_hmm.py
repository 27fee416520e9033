"""AutoCAVI on a Bayesian HMM (latent transition rows and emission means) against VB-HMM by hand.

``python benchmarks/autocavi_bayesian_hmm.py`` writes ``benchmarks/autocavi_bayesian_hmm.md``.
The model (MacKay 1997; Beal 2003, ch. 3): K states, transition rows A_k ~ Dirichlet(1, …, 1)
in a plate of the states, emission means μ_k ~ N(0, 10²) in the same plate, s_0 uniform,
s_t ~ Categorical(A[s_{t−1}]), y_t ~ N(μ[s_t], 1), for T steps (``--sizes``: KxT, one
sequence, or KxTxN, N sequences in a plate around the one ``pyro.markov`` loop).
Two fits of the same structured mean field q(A) q(μ) q(s_0, …, s_{T−1}) from the same start
(the chain's marginals at a seeded softmax, ``init``), to the same stopping rule (a sweep's
bound change below 1e-8 nats):

- VB-HMM written out in PyTorch (:func:`hand_written`): q(A_k) = Dirichlet(1 + Σ_t ξ_t(k, ·)),
  q(μ_k) Gaussian from the responsibilities, then q(s) by one forward-backward
  (:func:`pyro_vae.cavi.hmm.forward_backward`) on E_q[log A] and E_q[log N(y_t | μ_k, 1)];
- ``AutoCAVI`` on the Pyro model below, which finds the chain, reads each step as a mixture
  whose selector s_{t−1} picks s_t's row of A, and updates q(A) from the pairwise marginals.

At K = 3 the same model with the rows as K separate Dirichlet sites outside any plate (the only
form AutoCAVI fitted before, K²(K + 1)^K coefficients a step) is timed beside it, at T = 30.
Times are the least of ``--repeats`` calls after a first one, 1 thread, wall time; bounds are
whole-sequence ELBOs in nats, "gap" |AutoCAVI's − the hand-written one's|. The model does not
broadcast over AutoCAVI's batch of probe points (``Vindex(A)[..., s, :]`` with a scalar s),
so its probe points run under ``torch.func.vmap`` (``probe_batched_ == "vmap"``): 3 or 4
model runs. Before that they ran one point per run, 133 to 1,821 runs and nearly all of
AutoCAVI's time (15 to 461 times the hand-written time; 22 s at K = 8, T = 50).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
from contextlib import nullcontext
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex
from report_common import fastest_of, output_file, write_report

from pyro_vae.cavi import AutoCAVI
from pyro_vae.cavi.hmm import forward_backward

HERE = Path(__file__).parent
F64 = torch.float64
PRIOR_SD = 10.0


def data(k: int, t: int, n: int | None = None):
    """T steps of a sticky K-state chain (stay 0.8, else move to the next state, so every
    state is visited) with means 0, 3, 6, … and unit noise, [T]; ``n``: that many
    sequences, [T, N], each from its own random start state."""
    g = torch.Generator().manual_seed(0)
    states = [torch.zeros(n or 1, dtype=torch.long) if n is None else
              torch.randint(0, k, (n,), generator=g)]  # fmt: skip
    for _ in range(1, t):
        moves = torch.rand(n or 1, generator=g) < 0.2
        states.append(torch.where(moves, (states[-1] + 1) % k, states[-1]))
    means = 3.0 * torch.arange(k, dtype=F64)
    y = means[torch.stack(states)] + torch.randn(t, n or 1, generator=g, dtype=F64)
    return y if n is not None else y[:, 0]


def hmm(k: int, plated: bool = True):
    """The model; ``plated`` False: the rows as K Dirichlet sites outside any plate. For
    ``y`` [T, N], N sequences in a plate around the one ``pyro.markov`` loop."""

    def model(y):
        with pyro.plate("states", k):
            rows = pyro.sample("A", dist.Dirichlet(torch.ones(k, dtype=F64))) if plated else None
            mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), PRIOR_SD))
        if not plated:
            ones = torch.ones(k, dtype=F64)
            rows = torch.stack([pyro.sample(f"A{j}", dist.Dirichlet(ones)) for j in range(k)], -2)
        with pyro.plate("sequences", y.shape[1]) if y.dim() > 1 else nullcontext():
            s = pyro.sample("s_0", dist.Categorical(torch.ones(k, dtype=F64) / k))
            pyro.sample("y_0", dist.Normal(Vindex(mu)[..., s], 1.0), obs=y[0])
            for t in pyro.markov(range(1, len(y))):
                s = pyro.sample(f"s_{t}", dist.Categorical(Vindex(rows)[..., s, :]))
                pyro.sample(f"y_{t}", dist.Normal(Vindex(mu)[..., s], 1.0), obs=y[t])

    return model


def start(k: int, t: int, n: int | None = None) -> torch.Tensor:
    """The chain's marginals at the start, [T, K] (or [T, N, K]): a seeded softmax, shared
    by both fits."""
    g = torch.Generator().manual_seed(1)
    shape = (t, k) if n is None else (t, n, k)
    return torch.softmax(torch.randn(shape, generator=g, dtype=F64), -1)


def hand_written(y, r, tol=1e-8, max_iter=1000):
    """VB-HMM (Beal 2003, §3.4) in AutoCAVI's order: q(A) from the pairwise marginals ξ, q(μ)
    from the marginals r, then q(s) by forward-backward (of every sequence at once, for y
    [T, N] and r [T, N, K]). (bounds, A's concentrations)."""
    k = r.shape[-1]
    xi = r[:-1].unsqueeze(-1) * r[1:].unsqueeze(-2)  # the start's pairs: independent
    bounds = []
    for _ in range(max_iter):
        alpha = 1 + xi.reshape(-1, k, k).sum(0)
        e_log_a = torch.digamma(alpha) - torch.digamma(alpha.sum(-1, keepdim=True))
        precision = PRIOR_SD**-2 + r.reshape(-1, k).sum(0)
        m = (r * y.unsqueeze(-1)).reshape(-1, k).sum(0) / precision
        v = 1 / precision
        ell = -0.5 * math.log(2 * math.pi) - 0.5 * ((y.unsqueeze(-1) - m) ** 2 + v)
        log_pi = torch.full((k,), -math.log(k), dtype=F64)
        log_z, r, xi = forward_backward(log_pi, e_log_a, ell)
        prior_a = k * math.lgamma(k)  # log Γ(K) per row of Dirichlet(1, …, 1), at any A
        prior_mu = (
            dist.Normal(torch.tensor(0.0, dtype=F64), PRIOR_SD).log_prob(m) - 0.5 * v / PRIOR_SD**2
        )
        entropy = dist.Dirichlet(alpha).entropy().sum() + dist.Normal(m, v.sqrt()).entropy().sum()
        bounds.append(float(log_z.sum() + prior_a + prior_mu.sum() + entropy))
        if len(bounds) > 1 and abs(bounds[-1] - bounds[-2]) < tol:
            break
    return bounds, alpha


def row(k: int, t: int, repeats: int, n: int | None = None) -> str:
    y, r = data(k, t, n), start(k, t, n)
    init = {f"s_{i}": r[i] for i in range(t)}
    (bounds, alpha), hand_s = fastest_of(lambda: hand_written(y, r), repeats)
    model = hmm(k)
    auto, auto_s = fastest_of(lambda: AutoCAVI(model, init=init, tol=1e-8).fit(y), repeats)
    q_a = auto.variational_distributions()["A"].concentration
    a_gap = float((q_a - alpha).abs().max())
    rows_ms = ""
    if k == 3 and t <= 30 and n is None:
        rows_fit, rows_s = fastest_of(
            lambda: AutoCAVI(hmm(k, plated=False), init=init, tol=1e-8).fit(y), 1
        )  # fmt: skip
        rows_ms = f"{1e3 * rows_s:.0f} ({rows_fit.lower_bound_:.6f})"
    gap = abs(auto.lower_bound_ - bounds[-1])
    return (
        f"| {k} | {t} | {n or 1} | {len(bounds)} | {1e3 * hand_s:.1f} | {auto.n_iter_} | "
        f"{1e3 * auto_s:.0f} | {1e3 * auto.probe_seconds_:.0f} | {auto.probe_model_runs_} | "
        f"{auto_s / hand_s:.0f} | {bounds[-1]:.6f} | {gap:.1e} | {a_gap:.1e} | {rows_ms or '—'} |"
    )


def sizes(text: str) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in size.split("x")) for size in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=sizes,
                        default=sizes("3x30,3x200,5x100,8x50,3x50x20,4x50x100"),
                        help="KxT (one sequence) or KxTxN (N sequences in a plate), "
                             "comma-separated")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=output_file, default=HERE / "autocavi_bayesian_hmm.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    rows = [row(*size[:2], args.repeats, *size[2:]) for size in args.sizes]
    load_after = os.getloadavg()[0]
    write_report(args.out, [
        "# AutoCAVI on a Bayesian HMM against VB-HMM written by hand",
        "",
        f"`python benchmarks/autocavi_bayesian_hmm.py` on "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, pyro "
        f"{pyro.__version__}, 1 thread, load average {load_before:.2f} before and "
        f"{load_after:.2f} after ({os.cpu_count()} cores). ms of wall time (the least of "
        f"{args.repeats} calls after a first); bounds in nats; \"A gap\": the largest "
        "difference of q(A)'s concentrations; N: sequences, in a plate around the one "
        "pyro.markov loop where N > 1 (one chain of q each, one batched forward-backward). "
        "The last column: the same model with the rows as K separate sites outside any "
        "plate, ms (its bound), at K = 3, T = 30 only.",
        "",
        "| K | T | N | hand-written sweeps | hand-written ms | AutoCAVI sweeps | AutoCAVI ms | "
        "of which probing ms | probe model runs | AutoCAVI / hand | bound | gap | A gap | "
        "rows as separate sites |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ])  # fmt: skip


if __name__ == "__main__":
    main()
