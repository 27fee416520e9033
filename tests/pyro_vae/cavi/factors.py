"""Probing a model's factors, and comparing two sets of them, shared by the probe tests,
and the Normal-Gamma model several of them probe."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch

from pyro_vae.cavi.conjugate_forms import probe_factors
from pyro_vae.cavi.first_trace import find_dependencies
from pyro_vae.cavi.latent_units import find_latents
from tests.pyro_vae.cavi.float64 import t


def normal_gamma(y):
    """τ ~ Gamma(2, 1), μ ~ N(0, 1), y_n ~ N(μ, τ⁻¹): two global latents, one likelihood."""
    tau = pyro.sample("tau", dist.Gamma(t(2.0), t(1.0)))
    mu = pyro.sample("mu", dist.Normal(t(0.0), t(1.0)))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, tau.rsqrt()), obs=y)


def probe(model, *args):
    """({factor site: the latent units it reads}, {factor site: its probed Factor}) of
    ``model(*args)``, probed from a seeded generator."""
    latents = find_latents(poutine.trace(model).get_trace(*args))
    g = torch.Generator().manual_seed(0)
    depends, trace = find_dependencies(model, args, {}, latents, g)
    return depends, {f.name: f for f in probe_factors(model, args, {}, latents, depends, trace, g)}


def assert_same_factors(got: dict, expected: dict) -> None:
    """``got`` and ``expected`` ({site: Factor}) have the same factors, each on the same
    latents, with coefficients equal to float64 rounding (1e-9 of the largest: the factors
    are multilinear, so any set of probe points solves to them exactly but for rounding)."""
    assert got.keys() == expected.keys()
    for name, f in got.items():
        g = expected[name]
        assert (f.latents, f.rank, f.selector) == (g.latents, g.rank, g.selector)
        scale = 1 + g.coefficients.abs().max()
        assert torch.allclose(f.coefficients, g.coefficients, rtol=0, atol=1e-9 * scale), name


def plated_regression(X, y, rate=1.0, shared=False):
    """τ ~ Gamma(2, rate); w in a features plate, N(0, 1) or, ``shared``, N(0, 1/τ) (a
    Normal-Gamma block with τ); y ~ N(X w, 1/τ): the regression as Pyro users write it,
    w read whole by every datum (AutoCAVI takes it as one vector)."""
    tau = pyro.sample("tau", dist.Gamma(y.new_tensor(2.0), y.new_tensor(rate)))
    with pyro.plate("features", X.shape[-1]):
        w = pyro.sample("w", dist.Normal(y.new_tensor(0.0), tau.rsqrt() if shared else 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal((X * w.unsqueeze(-2)).sum(-1), tau.rsqrt()), obs=y)


def group_slopes(X, group, y, groups):
    """τ_g ~ Gamma(2, 1) in a groups plate at dim -2 (shape (G, 1)), slopes b_gf ~ N(0, 1/τ_g)
    in groups x features, y_n ~ N(x_n · b_{g_n}, 1/τ_{g_n}): per group, the Normal-Gamma
    regression as Pyro users write random slopes. y's parameters are [..., 1, N], so an
    outer plate of particles at dim -3 keeps its dim."""
    with pyro.plate("groups", groups, dim=-2):
        tau = pyro.sample("tau", dist.Gamma(y.new_tensor(2.0), y.new_tensor(1.0)))
        with pyro.plate("features", X.shape[-1], dim=-1):
            b = pyro.sample("b", dist.Normal(y.new_tensor(0.0), tau.rsqrt()))
    loc = (X * b[..., group, :]).sum(-1).unsqueeze(-2)
    scale = tau[..., group, 0].rsqrt().unsqueeze(-2)
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(loc, scale), obs=y)


def group_slopes_evidence(X, group, y, groups) -> float:
    """log p(y) of :func:`group_slopes`, nats: per group, y_g ~ Student-t(2a, 0, (b/a)(I +
    X_g X_gᵀ)) with a = 2, b = 1 (the noise and the prior sharing τ_g; Bishop 2006, eq.
    3.118), summed over the groups."""
    total = 0.0
    for k in range(groups):
        Xk, yk = X[group == k], y[group == k]
        scale = 0.5 * (torch.eye(len(yk), dtype=y.dtype) + Xk @ Xk.T)
        student = dist.MultivariateStudentT(
            y.new_tensor(4.0), torch.zeros_like(yk), torch.linalg.cholesky(scale)
        )
        total += float(student.log_prob(yk))
    return total
