import math

import mpmath
import pytest
import torch
from sklearn.exceptions import DataConversionWarning, NotFittedError
from sklearn.model_selection import cross_val_score
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


def test_converged_means_the_closed_form_fixed_point(data):
    X, y = data
    a0, b0, lam0 = 2.0, 0.5, 0.3
    fit = BayesianLinearRegression(a0=a0, b0=b0, lambda0=lam0, tol=1e-12).fit(X, y)
    assert fit.converged_
    # The CAVI fixed point solves E[τ] = (a₀ + (N+D)/2) / (b₀ + ½(R + D/E[τ])) with
    # R = ‖y − Xm‖² + λ₀‖m‖², i.e. E[τ] = (a₀ + N/2) / (b₀ + R/2), from the exact m.
    n, d = X.shape
    m = torch.linalg.solve(lam0 * torch.eye(d, dtype=X.dtype) + X.T @ X, X.T @ y)
    r = float(((y - X @ m) ** 2).sum() + lam0 * m @ m)
    e_tau = (a0 + n / 2) / (b0 + r / 2)
    # The last iteration scaled q(τ)'s rate and q(w)'s covariance by 1 + δ, which raised
    # the bound by KL = (a' + D/2)(δ − log(1 + δ)) ≈ ½ (a' + D/2) δ² (a' = q(τ)'s shape)
    # < tol; the update contracts errors in E[τ] by ρ ≈ D / (2a') = 0.08, so E[τ] is
    # within ρ/(1 − ρ)·δ < δ ≤ sqrt(2 tol / (a' + D/2)) = 3.2e-7 of the fixed point, relatively.
    # (Measured: 1.0e-8.)
    shape = fit.precision_shape_
    assert shape / fit.precision_rate_ == pytest.approx(
        e_tau, rel=math.sqrt(2 * 1e-12 / (shape + d / 2))
    )


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
    # tester BO: "float division by zero" part way through a fit of y near 1e160
    with pytest.raises(ValueError, match="y: values up to .*e.160, whose squares summed"):
        BayesianLinearRegression().fit(X, y * 1e160)
    BayesianLinearRegression().fit(X, y * 1e150)  # squares near 1e300 still sum finitely
    with pytest.raises(ValueError, match=r"X: shape \(0, 3\) has no rows; expected N ≥ 1"):
        BayesianLinearRegression().fit(torch.zeros(0, 3), torch.zeros(0))
    with pytest.raises(ValueError, match=r"X: shape \(30, 0\) has no columns"):
        BayesianLinearRegression().fit(X[:, :0], y)
    with pytest.raises(ValueError, match="y: 1 of its 30 entries is infinite"):
        BayesianLinearRegression().fit(X, torch.where(torch.arange(30) == 4, float("inf"), y))
    with pytest.raises(ValueError, match="tol: -1.0"):
        BayesianLinearRegression(tol=-1.0).fit(X, y)
    with pytest.raises(ValueError, match="max_iter: True is not a positive integer"):
        BayesianLinearRegression(max_iter=True).fit(X, y)
    with pytest.raises(ValueError, match="lambda0: nan is not a positive number"):
        BayesianLinearRegression(lambda0=float("nan")).fit(X, y)


def test_predicting_needs_a_fit_and_matching_rows(data):
    X, y = data
    with pytest.raises(NotFittedError, match="not fitted yet"):
        BayesianLinearRegression().predict(X)
    fit = BayesianLinearRegression().fit(X, y)
    with pytest.raises(ValueError, match=r"X: shape \(5, 2\) is not \[N, 3\]"):
        fit.predict(X[:5, :2])
    with pytest.raises(ValueError, match="X: 3 of its 3 entries are NaN"):
        fit.predict(torch.full((1, 3), float("nan")))


def _student_t_log_density(y, X, a0, b0, lam0, digits=50) -> float:
    """log p(y) with w and τ integrated out, y ~ Student-t(2a₀, 0, (b₀/a₀)(I + XXᵀ/λ₀))
    (Bishop 2006, §3.3), in 50-digit arithmetic (mpmath): no float64 rounding at all."""
    with mpmath.workdps(digits):
        n = len(y)
        rows = [[mpmath.mpf(float(v)) for v in row] for row in X.tolist()]
        xm = mpmath.matrix(rows)
        scale = (mpmath.mpf(b0) / a0) * (mpmath.eye(n) + xm * xm.T / mpmath.mpf(lam0))
        ym = mpmath.matrix([mpmath.mpf(float(v)) for v in y.tolist()])
        quad = (ym.T * mpmath.lu_solve(scale, ym))[0]
        nu = mpmath.mpf(2 * a0)
        return float(
            mpmath.loggamma((nu + n) / 2) - mpmath.loggamma(nu / 2)
            - n / 2 * mpmath.log(nu * mpmath.pi) - mpmath.log(mpmath.det(scale)) / 2
            - (nu + n) / 2 * mpmath.log(1 + quad / nu)
        )  # fmt: skip


def test_log_evidence_far_from_zero_is_the_exact_student_t_density():
    # y near 10⁶ fitted closely (residuals of order one) by X near 10³ under a weak prior:
    # the closed form's yᵀy − mᵀΛm cancelled terms of 10¹² to order one and put
    # log_evidence_ 1.8e-4 nats off; it is now the sum of squares it equals.
    g = torch.Generator().manual_seed(7)
    X = 1e3 + torch.randn(8, 2, generator=g, dtype=torch.float64)
    y = X @ torch.tensor([500.0, 500.0], dtype=torch.float64)
    y = y + torch.randn(8, generator=g, dtype=torch.float64)
    fit = BayesianLinearRegression(2.0, 1.0, 1e-4).fit(X, y)
    assert abs(fit.log_evidence_ - _student_t_log_density(y, X, 2.0, 1.0, 1e-4)) < 1e-8


def test_score_is_r_squared_and_a_column_y_is_read_raveled(data):
    """scikit-learn's regressor conventions (tester EP): score is R² = 1 − SS_res / SS_tot
    of the predictions (computed here by hand), cross_val_score takes the estimator without
    a scoring, and a y of shape (N, 1) fits as y with a DataConversionWarning."""
    X, y = data
    fit = BayesianLinearRegression().fit(X, y)
    residual = float(((y - X @ fit.coef_) ** 2).sum())
    total = float(((y - y.mean()) ** 2).sum())
    assert fit.score(X, y) == pytest.approx(1 - residual / total, rel=1e-12)
    scores = cross_val_score(BayesianLinearRegression(), X.numpy(), y.numpy(), cv=3)
    assert scores.shape == (3,) and (scores > 0.5).all()
    with pytest.warns(DataConversionWarning, match=r"y: a column vector, shape \(30, 1\)"):
        column = BayesianLinearRegression().fit(X, y[:, None])
    assert column.lower_bounds_ == fit.lower_bounds_
