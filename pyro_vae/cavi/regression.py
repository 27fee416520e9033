"""Bayesian linear regression with a Normal-Gamma prior: exact posterior and mean-field CAVI.

    τ ~ Gamma(a₀, b₀)                      (noise precision; rate parameterization)
    w | τ ~ N(0, (τ λ₀ I)⁻¹)               (D weights, prior precision λ₀ scaled by τ)
    y | w, τ ~ N(X w, τ⁻¹ I)               (N observations)

The posterior is Normal-Gamma (Bishop 2006, §3.3 and ex. 3.12): with Λ = λ₀I + XᵀX,
m = Λ⁻¹Xᵀy, a = a₀ + N/2, b = b₀ + ½(yᵀy − mᵀΛm), and the evidence is

    log p(y) = −N/2 log 2π + D/2 log λ₀ − ½ log|Λ| + a₀ log b₀ − a log b + log Γ(a) − log Γ(a₀).

Mean field q(w) q(τ) cannot represent the posterior's coupling of w and τ. CAVI
alternates (Blei et al. 2017, §3):

    q(w) = N(m, (E[τ] Λ)⁻¹)
    q(τ) = Gamma(a₀ + (N + D)/2,  b₀ + ½ E_w[‖y − Xw‖² + λ₀‖w‖²])
         = Gamma(a₀ + (N + D)/2,  b₀ + ½ (‖y − Xm‖² + λ₀‖m‖² + D / E[τ]))

and its ELBO, computed with every constant, is ≤ log p(y); the difference is
KL(q ‖ p(w, τ | y)), the mean-field gap.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import DataConversionWarning, NotFittedError

from pyro_vae.cavi._checks import (
    as_float64,
    finite,
    non_negative,
    positive,
    positive_int,
    squares_finite,
)
from pyro_vae.cavi.caller_warnings import warn_at_caller
from pyro_vae.cavi.convergence import warn_unconverged
from pyro_vae.cavi.cpu_default import on_the_cpu


def _as_data(X, y) -> tuple[torch.Tensor, torch.Tensor]:
    X, y = as_float64("X", X), as_float64("y", y)
    if X.dim() != 2:
        raise ValueError(f"X: shape {tuple(X.shape)} is not [N, D]")
    if X.shape[0] == 0:
        raise ValueError(f"X: shape {tuple(X.shape)} has no rows; expected N ≥ 1 observations")
    if X.shape[1] == 0:
        raise ValueError(f"X: shape {tuple(X.shape)} has no columns; expected D ≥ 1 features")
    if y.shape == (X.shape[0], 1):  # as scikit-learn's column_or_1d(y, warn=True) (tester EP)
        warn_at_caller(
            f"y: a column vector, shape {tuple(y.shape)}, was given where ({X.shape[0]},) "
            "was expected; it is read as y.ravel()",
            DataConversionWarning,
        )
        y = y.reshape(-1)
    if y.shape != (X.shape[0],):
        raise ValueError(
            f"y: shape {tuple(y.shape)} does not match X's {X.shape[0]} rows; "
            f"expected ({X.shape[0]},)"
        )
    return squares_finite("X", finite("X", X)), squares_finite("y", finite("y", y))


class BayesianLinearRegression(RegressorMixin, BaseEstimator):
    """Normal-Gamma Bayesian linear regression fitted by mean-field CAVI (scikit-learn style).

    Args:
        a0, b0: Gamma prior shape and rate of the noise precision τ.
        lambda0: prior precision of the weights, relative to τ.
        tol: stop when an iteration changes the ELBO by less than this (nats).
        max_iter: most CAVI iterations.

    Attributes (after ``fit``):
        coef_: E_q[w] (equal to the exact posterior mean).
        coef_covariance_: Cov_q(w) = (E_q[τ] Λ)⁻¹.
        precision_shape_, precision_rate_: q(τ) = Gamma(shape, rate).
        lower_bound_, lower_bounds_, n_iter_: the ELBO and its history.
        converged_: whether CAVI reached a fixed point of its update within ``tol`` in
            ``max_iter`` iterations (the meaning shared by every ``pyro_vae.cavi``
            estimator). An iteration is coordinate ascent, which raises the ELBO by the KL
            divergences between the old and new factors, so one that raises it by less than
            ``tol`` ends at a fixed point within ``tol`` nats. (The fixed point has a closed
            form, E_q[τ] = (a₀ + N/2) / (b₀ + ½(‖y − Xm‖² + λ₀‖m‖²)).)
        log_evidence_: exact log p(y).
        posterior_mean_, posterior_shape_, posterior_rate_, posterior_precision_matrix_:
            the exact Normal-Gamma posterior (m, a, b, Λ).

    ``score(X, y)`` is the R² of :meth:`predict` (scikit-learn's ``RegressorMixin``), so
    ``cross_val_score`` and ``GridSearchCV`` take the estimator as it is. The model has no
    intercept: centre y, or give X a column of ones. A y of shape (N, 1) is read as
    ``y.ravel()`` with a ``DataConversionWarning``, as scikit-learn's regressors read it.
    """

    def __init__(
        self,
        a0: float = 1.0,
        b0: float = 1.0,
        lambda0: float = 1.0,
        tol: float = 1e-12,
        max_iter: int = 1000,
    ) -> None:
        self.a0 = a0
        self.b0 = b0
        self.lambda0 = lambda0
        self.tol = tol
        self.max_iter = max_iter

    def _validate(self) -> tuple[float, float, float]:
        """Check the settings; return (a₀, b₀, λ₀) as floats."""
        non_negative("tol", self.tol)
        positive_int("max_iter", self.max_iter)
        return tuple(positive(name, getattr(self, name)) for name in ("a0", "b0", "lambda0"))

    @on_the_cpu
    def fit(self, X, y) -> BayesianLinearRegression:
        priors = self._validate()
        X, y = _as_data(X, y)
        n, d = X.shape
        a0, b0, lam0 = priors
        precision = lam0 * torch.eye(d, dtype=torch.float64) + X.T @ X
        mean = torch.linalg.solve(precision, X.T @ y)
        _, logdet = torch.linalg.slogdet(precision)
        shape = a0 + n / 2
        # yᵀy − mᵀΛm, as the sum of squares it equals: the difference cancels terms of
        # 10¹² to order one when y is near 10⁶ (log_evidence_ was 2e-4 nats off there)
        residual = float(((y - X @ mean) ** 2).sum() + lam0 * mean @ mean)
        rate = b0 + 0.5 * residual
        self.posterior_mean_, self.posterior_precision_matrix_ = mean, precision
        self.posterior_shape_, self.posterior_rate_ = shape, rate
        self.log_evidence_ = float(
            -n / 2 * math.log(2 * math.pi)
            + d / 2 * math.log(lam0)
            - 0.5 * logdet
            + a0 * math.log(b0)
            - shape * math.log(rate)
            + math.lgamma(shape)
            - math.lgamma(a0)
        )

        q_shape = a0 + (n + d) / 2
        e_tau = a0 / b0
        bounds, converged = [], False
        for _ in range(self.max_iter):
            q_rate = b0 + 0.5 * (residual + d / e_tau)
            e_tau = q_shape / q_rate
            bounds.append(self._elbo(priors, n, d, logdet, residual, q_shape, q_rate))
            if len(bounds) > 1 and abs(bounds[-1] - bounds[-2]) < self.tol:
                converged = True
                break
        self.coef_ = mean
        self.coef_covariance_ = torch.linalg.inv(e_tau * precision)
        self.precision_shape_, self.precision_rate_ = q_shape, q_rate
        self.lower_bound_, self.lower_bounds_ = bounds[-1], bounds
        self.n_iter_, self.converged_ = len(bounds), converged
        if not converged:
            warn_unconverged("BayesianLinearRegression", bounds, self.max_iter, self.tol)
        return self

    def _elbo(self, priors, n, d, logdet, residual, q_shape, q_rate) -> float:
        """E_q[log p(y, w, τ)] − E_q[log q(w) q(τ)], all constants kept, with q(w) at its
        CAVI optimum for the current q(τ)."""
        a0, b0, lam0 = priors
        e_tau = q_shape / q_rate
        e_log_tau = _digamma(q_shape) - math.log(q_rate)
        # E_q[‖y − Xw‖² + λ₀‖w‖²] = residual + tr(Λ Cov_q w) = residual + D / E[τ]
        quad = residual + d / e_tau
        e_log_lik_and_prior = (
            (n + d) / 2 * (e_log_tau - math.log(2 * math.pi))
            + d / 2 * math.log(lam0)
            - 0.5 * e_tau * quad
        )
        e_log_p_tau = a0 * math.log(b0) - math.lgamma(a0) + (a0 - 1) * e_log_tau - b0 * e_tau
        entropy_w = 0.5 * d * (1 + math.log(2 * math.pi)) - 0.5 * (d * math.log(e_tau) + logdet)
        entropy_tau = (
            q_shape - math.log(q_rate) + math.lgamma(q_shape) + (1 - q_shape) * _digamma(q_shape)
        )
        return float(e_log_lik_and_prior + e_log_p_tau + entropy_w + entropy_tau)

    @on_the_cpu
    def variational_distributions(
        self, weights: str = "weights", precision: str = "precision"
    ) -> dict[str, dist.Distribution]:
        """The fitted mean-field factors, keyed by the model's site names:
        q(w) = N(``coef_``, ``coef_covariance_``) and q(τ) = Gamma(shape, rate).

        :func:`pyro_vae.diagnostics.to_inference_data` draws from these when given the
        fitted estimator as the guide of a Pyro model with sites ``weights`` and ``precision``
        (the defaults, the sites of ``models.regression.BayesianRegression``).
        """
        if not hasattr(self, "coef_"):
            raise NotFittedError(
                "BayesianLinearRegression: not fitted yet; call fit(X, y) before "
                "variational_distributions()"
            )
        shape, rate = (
            torch.tensor(v, dtype=torch.float64)
            for v in (self.precision_shape_, self.precision_rate_)
        )
        return {
            weights: dist.MultivariateNormal(  # copies: an edit of q leaves the fit as it is
                self.coef_.clone(), covariance_matrix=self.coef_covariance_.clone()
            ),
            precision: dist.Gamma(shape, rate),
        }

    @on_the_cpu
    def predict(self, X, return_std: bool = False):
        """E[y | X] under q; with ``return_std`` also the predictive sd of the noisy y."""
        if not hasattr(self, "coef_"):
            raise NotFittedError("BayesianLinearRegression: not fitted yet; call fit(X, y) first")
        d = self.coef_.shape[0]
        X = as_float64("X", X)
        if X.dim() != 2 or X.shape[1] != d:
            raise ValueError(f"X: shape {tuple(X.shape)} is not [N, {d}]")
        X = finite("X", X)
        mean = X @ self.coef_
        if not return_std:
            return mean
        noise = self.precision_rate_ / (self.precision_shape_ - 1)
        var = (X @ self.coef_covariance_ * X).sum(1) + noise
        return mean, var.sqrt()


def _digamma(x: float) -> float:
    return float(torch.special.digamma(torch.tensor(x, dtype=torch.float64)))
