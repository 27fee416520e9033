"""Evaluation throughput: the K-sample log-likelihood's FLOP rate against the machine's matmul rate.

The physical limit of ``iwae_log_likelihood`` on a CPU is its dense matrix products. The
useful work per image is one encoder pass, 2(DH + 2HL) FLOPs, and one decoder pass per
particle, 2K(LH + HD); the achieved rate is that count over the wall time. The machine's
rate is the best of a few ``torch.mm`` of two n x n float32 matrices (n = 2048), at the
same thread count; the decoder's own big product ([K·B, H] x [H, D]) is timed too.
"""

from __future__ import annotations

import math
import time

import pyro
import torch
import torch.nn.functional as F
from perf_common import HIDDEN, LATENT, build_pyro_vae

from pyro_vae.evaluate import iwae_log_likelihood


def _best_seconds(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best achieved GFLOP/s of a square float32 matrix product."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / _best_seconds(lambda: torch.mm(a, b), repeats) / 1e9


def decoder_matmul_gflops(rows: int, x_dim: int, repeats: int = 5) -> float:
    """Best GFLOP/s of the decoder's output product, [rows, H] x [H, D] plus bias."""
    h, w, bias = torch.randn(rows, HIDDEN), torch.randn(x_dim, HIDDEN), torch.randn(x_dim)
    seconds = _best_seconds(lambda: torch.nn.functional.linear(h, w, bias), repeats)
    return 2 * rows * HIDDEN * x_dim / seconds / 1e9


def useful_flops(num_images: int, k: int, x_dim: int) -> float:
    encoder = 2 * (x_dim * HIDDEN + 2 * HIDDEN * LATENT)
    decoder = 2 * (LATENT * HIDDEN + HIDDEN * x_dim)
    return num_images * (encoder + k * decoder)


@torch.no_grad()
def fused_log_weights(model, guide, x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """The same log p(x) written by hand in torch, no Pyro: what eager torch allows.

    log w = Σ_d (x_d ℓ_d − softplus(ℓ_d)) + log N(z; 0, I) − log q(z | x): the contraction
    over pixels and one softplus pass, as ``pyro_vae.likelihoods.BernoulliImage`` computes
    it (torch's ``Bernoulli.log_prob`` takes about six elementwise passes and a negation).
    """
    h = guide.trunk(x)
    loc, scale = guide.loc_head(h), torch.exp(guide.log_scale_head(h))
    acc = torch.full((x.shape[0],), -math.inf)
    for start in range(0, k, chunk):
        eps = torch.randn(min(chunk, k - start), *loc.shape)
        z = loc + scale * eps
        logits = model.decoder(z)
        log_lik = torch.einsum("kbd,bd->kb", logits, x) - F.softplus(logits).sum(-1)
        log_w = log_lik - 0.5 * (z.pow(2) - eps.pow(2)).sum(-1) + scale.log().sum(-1)
        acc = torch.logaddexp(acc, torch.logsumexp(log_w, 0))
    return acc - math.log(k)


def measure(x: torch.Tensor, k: int, repeats: int = 3, seed: int = 0) -> dict:
    """Seconds and GFLOP/s of ``iwae_log_likelihood`` (default chunking) on images ``x``."""
    model, guide = build_pyro_vae(x.shape[1], seed)
    pyro.set_rng_seed(seed)
    seconds = _best_seconds(lambda: iwae_log_likelihood(model, guide, x, num_samples=k), repeats)
    flops = useful_flops(x.shape[0], k, x.shape[1])
    # iwae_log_likelihood's default chunking: 2^23 elements per chunk of a batch of ≤ 100
    chunk = max(1, 2**23 // (min(100, x.shape[0]) * x.shape[1]))
    fused = _best_seconds(lambda: fused_log_weights(model, guide, x, k, chunk), repeats)
    return {
        "fused_gflops": flops / fused / 1e9,
        "images": int(x.shape[0]),
        "k": k,
        "seconds": seconds,
        "gflops": flops / seconds / 1e9,
        "peak_gflops": matmul_gflops(),
        "decoder_gflops": decoder_matmul_gflops(10_000, x.shape[1]),
    }


def markdown(r: dict) -> list[str]:
    return [
        "| quantity | value |",
        "|---|---:|",
        f"| log p(x), K={r['k']}, {r['images']} images: seconds (best of runs) "
        f"| {r['seconds']:.2f} |",
        f"| achieved rate (useful FLOPs / s) | {r['gflops']:.1f} GFLOP/s |",
        f"| dense matmul rate, 2048x2048 float32 (best) | {r['peak_gflops']:.1f} GFLOP/s |",
        f"| decoder product alone, [10000x{HIDDEN}]x[{HIDDEN}x D] (best) "
        f"| {r['decoder_gflops']:.1f} GFLOP/s |",
        f"| **fraction of the matmul rate** | **{r['gflops'] / r['peak_gflops']:.0%}** |",
        f"| the same log-weights written by hand in eager torch, no Pyro "
        f"| {r['fused_gflops']:.1f} GFLOP/s ({r['fused_gflops'] / r['peak_gflops']:.0%}) |",
    ]
