import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from pyro_vae.cavi import AutoCAVI
from pyro_vae.cavi.first_trace import first_run
from pyro_vae.cavi.prior_means import PriorMeans
from tests.pyro_vae.cavi.float64 import F64, t


def test_continuous_latents_take_their_prior_means_and_the_rest_is_left_alone():
    """Gamma, Dirichlet and Wishart sites take their means (a/b, α/Σα, νW); a Categorical's
    mean is not a value it takes, so it is drawn; observed sites keep their data."""

    def model():
        tau = pyro.sample("tau", dist.Gamma(t(3.0), t(2.0)))
        pi = pyro.sample("pi", dist.Dirichlet(t([1.0, 3.0])))
        lam = pyro.sample(
            "lam", dist.Wishart(t(4.0), covariance_matrix=2 * torch.eye(2, dtype=F64))
        )
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Categorical(pi))
            pyro.sample("x", dist.Normal(z.to(F64), tau.rsqrt()), obs=t([0.0, 1.0, 1.0]))
        return lam

    trace = poutine.trace(PriorMeans()(model)).get_trace()
    assert float(trace.nodes["tau"]["value"]) == 1.5
    assert torch.equal(trace.nodes["pi"]["value"], t([0.25, 0.75]))
    assert torch.equal(trace.nodes["lam"]["value"], 8 * torch.eye(2, dtype=F64))
    assert set(trace.nodes["z"]["value"].tolist()) <= {0, 1}
    assert torch.equal(trace.nodes["x"]["value"], t([0.0, 1.0, 1.0]))


def _near_singular_wishart_model(X):
    lam = pyro.sample("lam", dist.Wishart(t(3.01), covariance_matrix=torch.eye(4, dtype=F64)))
    with pyro.plate("data", len(X)):
        pyro.sample("x", dist.MultivariateNormal(X.new_zeros(4), precision_matrix=lam), obs=X)


def test_a_wishart_prior_whose_draws_are_singular_is_fitted_to_its_exact_evidence():
    """Λ ~ Wishart(3.01, I) in D = 4 draws a last Bartlett variate of χ²(0.01), ~0, and the
    model's Cholesky of Λ, or Pyro's check of it, fails at such a draw (tester 33):
    AutoCAVI's first run, which reads only the model's structure, reruns at the prior mean,
    and the fit reaches the closed-form log evidence
    −nD/2 log π + log Γ_D((ν + n)/2) − log Γ_D(ν/2) − (ν + n)/2 log|I + S|
    (Bishop 2006, B.79 and 2.155; W = I), S = Σ xxᵀ."""
    X = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    # Cholesky's RuntimeError, or, where the draw is further from PD (rounding differs by
    # CPU), Pyro's validation's ValueError for the same draw
    with pytest.raises((RuntimeError, ValueError), match=r"(?i)positive-?definite"):
        with torch.random.fork_rng():
            torch.manual_seed(0)  # the draw first_run makes at random_state 0
            poutine.trace(_near_singular_wishart_model).get_trace(X)
    n, d, df = 5, 4, 3.01
    mvlgamma = lambda a: float(torch.mvlgamma(t(a), d))  # noqa: E731
    exact = (-n * d / 2 * math.log(math.pi) + mvlgamma((df + n) / 2) - mvlgamma(df / 2)
             - (df + n) / 2 * float(torch.logdet(torch.eye(d, dtype=F64) + X.T @ X)))  # fmt: skip
    fit = AutoCAVI(_near_singular_wishart_model, random_state=0, tol=1e-12).fit(X)
    assert fit.lower_bound_ == pytest.approx(exact, abs=1e-8 * (1 + abs(exact)))


def test_a_model_that_fails_at_its_prior_means_too_raises_its_own_error():
    def broken(X):
        pyro.sample("tau", dist.Gamma(t(1.0), t(1.0)))
        raise ValueError("the user's own bug")

    with pytest.raises(ValueError, match="the user's own bug"):
        first_run(broken, (t([0.0]),), {}, 0)
