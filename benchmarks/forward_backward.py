"""``forward_backward``'s two ways beside each other, and beside Pyro's ``DiscreteHMM``.

``python benchmarks/forward_backward.py`` writes ``benchmarks/forward_backward.md``. For each
size (``--sizes``, K x T x chains) an HMM with Gaussian emissions y_t ~ N(μ_k, 1), one
transition matrix and random logits (seeded), and for each way the fastest of ``--repeats``
calls after a first, one thread, wall time:

- the recursions, one step at a time (``_messages_in_turn``, taken where chains·K³·⌈log₂ T⌉
  exceeds ``_SCAN_COST``), and the parallel scan (``_messages_by_scan``), each forced;
  both give log Z, the marginals and the pairwise marginals;
- ``forward_backward`` as it chooses (its way in the table);
- Pyro's ``DiscreteHMM.log_prob`` on the same model and data (its initial logits are the
  state's one transition before s_0, so s_0's are theirs times A), which computes log Z alone
  (by its own parallel scan, ``_sequential_logmatmulexp``): the library's time for a
  smaller job, and an independent log Z (the table's last column: the largest difference
  from it, nats).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import pyro.distributions as dist
import torch
from report_common import (
    fastest_of,
    load_average,
    machine_footer,
    output_file,
    positive_int,
    write_report,
)

from pyro_vae.cavi import hmm

HERE = Path(__file__).parent
F64 = torch.float64
SIZES = "2x1000x1,3x200x1,5x100x1,8x50x1,8x200x1,16x200x1,3x50x20,4x50x100"


def sizes_list(text: str) -> list[tuple[int, int, int]]:
    """``--sizes``: comma-separated KxTxC, each a positive integer (tester ES: ``2x3``
    failed unpacking, naming no flag)."""
    sizes = []
    for size in text.split(","):
        parts = size.split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(
                f"{size!r} is not K x T x chains, three positive integers joined by x"
            )
        sizes.append(tuple(int(p) for p in parts))
    return sizes


def problem(k: int, t: int, chains: int):
    """(log π [chains, K], log A [K, K], y [chains, T], μ [K]) seeded by the size."""
    g = torch.Generator().manual_seed(1000 * k + t + chains)
    log_pi = torch.log_softmax(torch.randn(chains, k, generator=g, dtype=F64), -1)
    log_a = torch.log_softmax(2 * torch.randn(k, k, generator=g, dtype=F64), -1)
    mu = 3 * torch.arange(k, dtype=F64)
    y = mu[torch.randint(0, k, (chains, t), generator=g)] + torch.randn(chains, t, generator=g)
    return log_pi, log_a, y, mu


def with_cost(cost: float, call):
    """``call()`` with ``forward_backward``'s choice of way forced by ``_SCAN_COST``."""
    kept = hmm._SCAN_COST
    hmm._SCAN_COST = cost
    try:
        return call()
    finally:
        hmm._SCAN_COST = kept


def row(k: int, t: int, chains: int, repeats: int) -> str:
    log_pi, log_a, y, mu = problem(k, t, chains)
    log_lik = dist.Normal(mu, 1.0).log_prob(y.T.unsqueeze(-1))  # [T, chains, K]
    # DiscreteHMM's initial logits are the state's before the first step: s_0's are theirs
    # after one transition
    log_pi0 = torch.logsumexp(log_pi.unsqueeze(-1) + log_a, -2)
    pi = log_pi0 if chains > 1 else log_pi0[0]
    lik = log_lik if chains > 1 else log_lik[:, 0]

    def fb():
        return hmm.forward_backward(pi, log_a, lik)

    (log_z, _, _), loop_s = with_cost(-1, lambda: fastest_of(fb, repeats))
    (scan_z, _, _), scan_s = with_cost(math.inf, lambda: fastest_of(fb, repeats))
    _, default_s = fastest_of(fb, repeats)
    cost = chains * k**3 * math.ceil(math.log2(max(t, 2)))
    way = "scan" if cost <= hmm._SCAN_COST else "loop"
    pyro_hmm = dist.DiscreteHMM(log_pi, log_a, dist.Normal(mu, 1.0))
    pyro_z, pyro_s = fastest_of(lambda: pyro_hmm.log_prob(y), repeats)
    gap = max(float((log_z - pyro_z.reshape(log_z.shape)).abs().max()),
              float((scan_z - pyro_z.reshape(scan_z.shape)).abs().max()))  # fmt: skip
    return (
        f"| {k} | {t} | {chains} | {cost:,} | {way} | {1e3 * loop_s:.2f} | "
        f"{1e3 * scan_s:.2f} | {loop_s / scan_s:.1f} | {1e3 * default_s:.2f} | "
        f"{1e3 * pyro_s:.2f} | {gap:.1e} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", type=sizes_list, default=SIZES, help="K x T x chains, comma-separated"
    )
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--out", type=output_file, default=HERE / "forward_backward.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = sizes_list(args.sizes) if isinstance(args.sizes, str) else args.sizes
    loads, start = [load_average()], time.perf_counter()
    rows = [row(k, t, chains, args.repeats) for k, t, chains in sizes]
    loads.append(load_average())
    write_report(args.out, [
        "# forward_backward: the loop over steps, the parallel scan, and Pyro's DiscreteHMM",
        "",
        f"`python benchmarks/forward_backward.py`; ms, the fastest of {args.repeats} calls "
        "after a first, 1 thread. Cost: chains·K³·⌈log₂ T⌉, the scan's work over the loop's "
        f"per step; `forward_backward` scans where it is at most {hmm._SCAN_COST:,}. Both "
        "ways give log Z, the marginals and the pairwise marginals; Pyro's DiscreteHMM "
        "log Z alone. Last column: the largest |log Z − Pyro's| of either way, nats.",
        "",
        "| K | T | chains | cost | way taken | loop ms | scan ms | loop / scan | "
        "forward_backward ms | Pyro DiscreteHMM log Z ms | log Z vs Pyro |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        machine_footer(tuple(loads), time.perf_counter() - start),
    ])  # fmt: skip


if __name__ == "__main__":
    main()
