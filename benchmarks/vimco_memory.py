"""VIMCO's leave-one-out baselines in O(K·N) memory, against the K-replaced-copies form.

``python benchmarks/vimco_memory.py`` writes ``benchmarks/vimco_memory.md``: peak resident
memory above the process's baseline and seconds per step for one ``vimco`` training step
at K samples and N datapoints, side by side with the same step computing the baselines
the old way (K copies of the log-weights, copy k with l_k replaced by the mean of the
others: O(K²·N)) and with an ``iwae`` step on the same model, each in a fresh process so
peak memory is its own. The model is a sigmoid belief net on 64-pixel images (digits'
size) with 20 binary latents, as ``models.sbn`` builds it.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from report_common import output_file

HERE = Path(__file__).resolve().parent


def _old_leave_one_out(lw):
    import math

    import torch

    k = lw.shape[0]
    others_mean = (lw.sum(0, keepdim=True) - lw) / (k - 1)
    eye = torch.eye(k, dtype=torch.bool).unsqueeze(-1)
    replaced = torch.where(eye, others_mean.unsqueeze(1), lw.unsqueeze(0))
    return torch.logsumexp(replaced, dim=1) - math.log(k)


def worker(kind: str, k: int, n: int, steps: int) -> dict:
    """One measurement, in this (fresh) process."""
    import pyro
    import torch

    import pyro_vae.estimators.vimco as vimco
    from models.sbn import SBN
    from pyro_vae.estimators import get

    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    model = SBN(64, latent_dim=20)
    x = torch.bernoulli(torch.full((n, 64), 0.3))
    if kind == "vimco, K copies":
        vimco._leave_one_out_bounds = _old_leave_one_out
    name = "iwae" if kind.startswith("iwae") else "vimco"
    guide = model.make_guide()
    if name == "iwae":  # iwae needs a reparameterizable guide: the VAE's Gaussian one
        from models.vae import VAE

        model = VAE(64, latent_dim=20, hidden_dims=())
        guide = model.make_guide()
    elbo = get(name, num_particles=k)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    elbo.loss_and_grads(model, guide, x)  # warm up (plate nesting, allocator)
    started = time.perf_counter()
    for _ in range(steps):
        elbo.loss_and_grads(model, guide, x)
    seconds = (time.perf_counter() - started) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": kind, "peak_mb": (peak - base) / 1024, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=output_file, default=HERE / "vimco_memory.md")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.k, args.n, args.steps)))
        return
    rows = []
    for kind in ("vimco", "vimco, K copies", "iwae (Gaussian VAE)"):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--worker",
                kind,
                "--k",
                str(args.k),
                "--n",
                str(args.n),
                "--steps",
                str(args.steps),
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=HERE.parent,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1])
    lines = [
        "# VIMCO's leave-one-out baselines: memory and time per step",
        "",
        f"`python benchmarks/vimco_memory.py` (K = {args.k}, N = {args.n}, {args.steps} steps "
        f"after one warm-up, 1 thread, fresh process each; {platform.machine()}, Python "
        f"{platform.python_version()}). Peak resident memory is what the steps added to the "
        "process's peak before them (model, data and imports).",
        "",
        "| step | peak RSS added by the steps (MB) | seconds per step |",
        "|---|---:|---:|",
        *[f"| {r['kind']} | {r['peak_mb']:.0f} | {r['seconds']:.3f} |" for r in rows],
    ]
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
