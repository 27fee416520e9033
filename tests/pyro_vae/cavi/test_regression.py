import math

import pytest
import torch
from torch.distributions import Gamma, MultivariateNormal, Normal

from pyro_vae.cavi import BayesianLinearRegression


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 3, generator=g, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.7 * torch.randn(
        30, generator=g, dtype=torch.float64
    )
    return X, y


def log_evidence_by_quadrature(X, y, a0, b0, lam0):
    # p(y | τ) = N(0, τ⁻¹ (I + X Xᵀ / λ₀)) once w is integrated out; then a 1-D integral.
    cov = torch.eye(len(y), dtype=torch.float64) + X @ X.T / lam0
    log_tau = torch.linspace(-12, 6, 20001, dtype=torch.float64)
    tau = log_tau.exp()
    # log N(y; 0, C/τ) = −N/2 log 2π − ½ log|C| + N/2 log τ − τ/2 yᵀC⁻¹y
    n = len(y)
    quad = float(y @ torch.linalg.solve(cov, y))
    log_lik = (
        -n / 2 * math.log(2 * math.pi)
        - 0.5 * torch.linalg.slogdet(cov)[1]
        + n / 2 * log_tau
        - tau / 2 * quad
    )
    log_prior = Gamma(
        torch.tensor(a0, dtype=torch.float64), torch.tensor(b0, dtype=torch.float64)
    ).log_prob(tau)
    integrand = log_lik + log_prior + log_tau  # dτ = τ d(log τ)
    step = float(log_tau[1] - log_tau[0])
    return float(torch.logsumexp(integrand, 0)) + math.log(step)


def test_exact_evidence_matches_quadrature(data):
    X, y = data
    fit = BayesianLinearRegression(a0=2.0, b0=0.5, lambda0=0.3).fit(X, y)
    assert fit.log_evidence_ == pytest.approx(
        log_evidence_by_quadrature(X, y, 2.0, 0.5, 0.3), abs=1e-6
    )


def test_elbo_matches_a_monte_carlo_estimate_of_the_same_q(data):
    X, y = data
    fit = BayesianLinearRegression(a0=2.0, b0=0.5, lambda0=0.3).fit(X, y)
    q_tau = Gamma(
        torch.tensor(fit.precision_shape_, dtype=torch.float64),
        torch.tensor(fit.precision_rate_, dtype=torch.float64),
    )
    q_w = MultivariateNormal(fit.coef_, fit.coef_covariance_)
    torch.manual_seed(0)
    tau, w = q_tau.sample((200000,)), q_w.sample((200000,))
    log_p = (
        Normal(w @ X.T, tau.rsqrt()[:, None]).log_prob(y).sum(1)
        + Normal(0.0, (0.3 * tau).rsqrt()[:, None]).log_prob(w).sum(1)
        + Gamma(
            torch.tensor(2.0, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
        ).log_prob(tau)
    )
    samples = log_p - q_w.log_prob(w) - q_tau.log_prob(tau)
    se = samples.std().item() / math.sqrt(len(samples))
    assert fit.lower_bound_ == pytest.approx(samples.mean().item(), abs=4 * se)


def test_mean_field_gap_is_positive_and_the_bound_only_rises(data):
    X, y = data
    fit = BayesianLinearRegression().fit(X, y)
    assert fit.converged_ and fit.n_iter_ >= 2
    assert 0 < fit.log_evidence_ - fit.lower_bound_ < 1.0
    bounds = torch.tensor(fit.lower_bounds_)
    assert (bounds[1:] - bounds[:-1] >= -1e-12).all()
    torch.testing.assert_close(fit.coef_, fit.posterior_mean_)


def test_predict(data):
    X, y = data
    fit = BayesianLinearRegression().fit(X, y)
    mean, sd = fit.predict(X[:5], return_std=True)
    assert mean.shape == sd.shape == (5,) and (sd > 0).all()
    assert ((mean - y[:5]).abs() < 4 * sd).all()


def test_bad_input_is_named(data):
    X, y = data
    with pytest.raises(ValueError, match=r"y: shape \(29,\)"):
        BayesianLinearRegression().fit(X, y[:-1])
    with pytest.raises(ValueError, match="X: shape"):
        BayesianLinearRegression().fit(y, y)
    with pytest.raises(ValueError, match="b0: -1"):
        BayesianLinearRegression(b0=-1).fit(X, y)
    bad = X.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        BayesianLinearRegression().fit(bad, y)
