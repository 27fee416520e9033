"""Mean-field VB for ARD regression written out, the independent answer the ARD tests of
AutoCAVI compare with (``test_auto.py``, ``test_kronecker_probe.py``)."""

import math

import torch
from pyro import distributions as dist

from tests.pyro_vae.cavi.float64 import F64, t


def ard_vb(X, y, prior, sweeps=2000):
    """Mean-field VB for ARD regression written out (Bishop & Tipping 2000): q(w) q(α) q(τ),
    α_d ~ Gamma(a0, b0), w ~ N(0, diag(α)⁻¹), τ ~ Gamma(c0, d0), y ~ N(Xw, τ⁻¹ I), updated w,
    τ, α from the priors' means to a fixed point; (its ELBO in nats, E[α], E[w], Cov[w])."""
    a0, b0, c0, d0 = prior
    n, d = X.shape
    xtx, xty = X.T @ X, X.T @ y
    a, b = torch.full((d,), a0, dtype=F64), torch.full((d,), b0, dtype=F64)
    c, e = t(c0), t(d0)
    for _ in range(sweeps):
        cov = torch.linalg.inv(torch.diag(a / b) + c / e * xtx)
        mean = c / e * cov @ xty
        residual = ((y - X @ mean) ** 2).sum() + (xtx * cov).sum()
        c, e = t(c0 + n / 2), d0 + residual / 2
        a, b = torch.full((d,), a0 + 0.5, dtype=F64), b0 + (mean**2 + cov.diagonal()) / 2
    log_a, log_t = torch.digamma(a) - b.log(), torch.digamma(c) - e.log()
    log_2pi = math.log(2 * math.pi)
    expected = n / 2 * (log_t - log_2pi) - c / e * residual / 2
    expected += (log_a / 2 - log_2pi / 2 - a / b * (mean**2 + cov.diagonal()) / 2).sum()
    expected += (a0 * math.log(b0) - math.lgamma(a0) + (a0 - 1) * log_a - b0 * a / b).sum()
    expected += c0 * math.log(d0) - math.lgamma(c0) + (c0 - 1) * log_t - d0 * c / e
    entropy = torch.logdet(2 * math.pi * math.e * cov) / 2
    entropy += dist.Gamma(a, b).entropy().sum() + dist.Gamma(c, e).entropy()
    return float(expected + entropy), a / b, mean, cov
