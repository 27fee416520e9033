"""Bayesian Gaussian mixture by coordinate-ascent variational inference (CAVI).

The model of scikit-learn's ``BayesianGaussianMixture`` with
``weight_concentration_prior_type="dirichlet_distribution"`` and ``covariance_type="full"``:

    π ~ Dirichlet(α₀ 1_K)
    Λ_k ~ Wishart(W₀, ν₀),   μ_k | Λ_k ~ N(m₀, (β₀ Λ_k)⁻¹)          k = 1..K
    z_n ~ Categorical(π),    x_n | z_n = k ~ N(μ_k, Λ_k⁻¹)           n = 1..N

with W₀⁻¹ = ``covariance_prior``, ν₀ = ``degrees_of_freedom_prior``, β₀ =
``mean_precision_prior``, m₀ = ``mean_prior``, α₀ = ``weight_concentration_prior`` (the
same names and defaults as scikit-learn). The mean-field q(Z) q(π) Π_k q(μ_k, Λ_k) is
updated in closed form (Bishop 2006, §10.2, eqs. 10.46-10.63; Blei et al. 2017, §3):

    E-step  r_nk ∝ exp(E ln π_k + ½ E ln|Λ_k| − D/2 ln 2π
                       − ½ [D/β_k + ν_k (x_n − m_k)ᵀ W_k (x_n − m_k)])
    M-step  α_k = α₀ + N_k,  β_k = β₀ + N_k,  m_k = (β₀ m₀ + N_k x̄_k) / β_k,  ν_k = ν₀ + N_k,
            W_k⁻¹ = W₀⁻¹ + N_k S_k + β₀ N_k / β_k (x̄_k − m₀)(x̄_k − m₀)ᵀ

``lower_bound_`` is the ELBO with every constant kept (Bishop eqs. 10.70-10.77), a true
lower bound on log p(X); scikit-learn's own ``lower_bound_`` drops constants, so it is
not. Everything is vectorized in torch over points and components.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning, NotFittedError

from pyro_vae.cavi._checks import (
    as_float64,
    check_seed,
    finite,
    non_negative,
    positive,
    positive_int,
    seed_of,
    squares_finite,
)
from pyro_vae.cavi.caller_warnings import warn_at_caller
from pyro_vae.cavi.convergence import warn_unconverged
from pyro_vae.cavi.cpu_default import on_the_cpu

_LOG_2PI = math.log(2 * math.pi)


def _mvlgamma_terms(nu: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_i ln Γ((ν + 1 − i)/2) and Σ_i ψ((ν + 1 − i)/2), i = 1..D, per component."""
    half = (nu[:, None] + 1 - torch.arange(1, d + 1, dtype=nu.dtype)) / 2
    return torch.lgamma(half).sum(1), torch.digamma(half).sum(1)


def _log_wishart_norm(logdet_w: torch.Tensor, nu: torch.Tensor, d: int) -> torch.Tensor:
    """ln B(W, ν) of the Wishart normalizer (Bishop eq. B.79)."""
    lgammas, _ = _mvlgamma_terms(nu, d)
    return (
        -nu / 2 * logdet_w
        - nu * d / 2 * math.log(2)
        - d * (d - 1) / 4 * math.log(math.pi)
        - lgammas
    )


class BayesianGaussianMixture(BaseEstimator):
    """Variational Bayesian Gaussian mixture with full covariances, fitted by CAVI.

    Args (names and defaults as in scikit-learn):
        n_components: K.
        tol: stop when an iteration changes the ELBO by less than this (nats).
        reg_covar: added to the diagonal of each S_k, as scikit-learn does: an absolute
            amount (W_k⁻¹ gains N_k·reg_covar·I), so q(Λ_k) is then not the CAVI update and
            the bound not mean field's optimum. On a feature of sd 10⁻³ the default 10⁻⁶
            left the bound 42 nats below it (tester Z; 10⁻⁴ nats at 10⁻⁹, exact at 0):
            scale the features, or pass ``reg_covar=0`` for the exact update.
        max_iter: most iterations per initialization.
        n_init: initializations; the best ELBO is kept.
        init_params: ``"kmeans"`` (k-means++ seeding and Lloyd steps) or ``"random"``.
        weight_concentration_prior: α₀ (default 1/K).
        mean_precision_prior: β₀ (default 1).
        mean_prior: m₀ (default the data mean).
        degrees_of_freedom_prior: ν₀ (default D).
        covariance_prior: W₀⁻¹ (default the data covariance).
        random_state: seed: None (fresh entropy), an integer ≥ 0, or a NumPy
            ``RandomState``/``Generator`` (a seed drawn from it at each fit, as scikit-learn).

    Attributes (after ``fit``): ``weights_``, ``means_``, ``covariances_`` (W_k⁻¹/ν_k, as
    in scikit-learn), ``precisions_``, ``weight_concentration_``, ``mean_precision_``,
    ``degrees_of_freedom_``, ``lower_bound_``, ``lower_bounds_``, ``n_iter_``, and
    ``converged_``: whether the kept initialization reached a fixed point of its update
    within ``tol`` in ``max_iter`` iterations (the meaning shared by every
    ``pyro_vae.cavi`` estimator). An iteration (E-step, then M-step) is coordinate ascent,
    which raises the ELBO by the KL divergences between the old and new factors, so an
    iteration that changes it by less than ``tol`` — scikit-learn's test — ends at a fixed
    point within ``tol`` nats (with ``reg_covar`` = 0; ``reg_covar`` perturbs the M-step,
    by far more than ``tol`` on features of small scale: see ``reg_covar``).

    Degenerate data fit as in scikit-learn: with fewer distinct points than components,
    k-means leaves components empty and warns (``ConvergenceWarning``, scikit-learn's
    message); a constant feature makes the default ``covariance_prior`` (the data
    covariance) singular, and its eigenvalues are raised to ``reg_covar`` so that the prior
    is proper and ``lower_bound_`` finite.
    """

    def __init__(
        self,
        n_components: int = 1,
        *,
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
        weight_concentration_prior: float | None = None,
        mean_precision_prior: float | None = None,
        mean_prior=None,
        degrees_of_freedom_prior: float | None = None,
        covariance_prior=None,
        random_state: int | None = None,
    ) -> None:
        self.n_components = n_components
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weight_concentration_prior = weight_concentration_prior
        self.mean_precision_prior = mean_precision_prior
        self.mean_prior = mean_prior
        self.degrees_of_freedom_prior = degrees_of_freedom_prior
        self.covariance_prior = covariance_prior
        self.random_state = random_state

    # -- checks and priors -------------------------------------------------------------
    def _check(self, X) -> torch.Tensor:
        for name in ("n_components", "max_iter", "n_init"):
            positive_int(name, getattr(self, name))
        non_negative("tol", self.tol)
        non_negative("reg_covar", self.reg_covar)
        check_seed("random_state", self.random_state)
        if self.init_params not in ("kmeans", "random"):
            raise ValueError(f"init_params: {self.init_params!r} is not 'kmeans' or 'random'")
        X = as_float64("X", X)
        if X.dim() != 2 or X.shape[1] == 0:
            raise ValueError(
                f"X: shape {tuple(X.shape)} is not [n_samples, n_features] with n_features ≥ 1"
            )
        if X.shape[0] < self.n_components:
            raise ValueError(
                f"X: {X.shape[0]} samples are fewer than n_components={self.n_components}"
            )
        if X.shape[0] < 2:  # as scikit-learn: the default priors need a data covariance
            raise ValueError(f"X: {X.shape[0]} sample; expected at least 2")
        return squares_finite("X", finite("X", X))

    def _priors(self, X: torch.Tensor) -> None:
        n, d = X.shape
        alpha0 = self.weight_concentration_prior
        self.weight_concentration_prior_ = (
            1.0 / self.n_components
            if alpha0 is None
            else positive("weight_concentration_prior", alpha0)
        )
        self.mean_precision_prior_ = (
            1.0
            if self.mean_precision_prior is None
            else positive("mean_precision_prior", self.mean_precision_prior)
        )
        self.mean_prior_ = (
            X.mean(0)
            if self.mean_prior is None
            else finite("mean_prior", as_float64("mean_prior", self.mean_prior))
        )
        nu0 = self.degrees_of_freedom_prior
        self.degrees_of_freedom_prior_ = (
            float(d) if nu0 is None else positive("degrees_of_freedom_prior", nu0)
        )
        if self.degrees_of_freedom_prior_ <= d - 1:
            raise ValueError(
                f"degrees_of_freedom_prior: {self.degrees_of_freedom_prior_} "
                f"must exceed n_features - 1 = {d - 1}"
            )
        if self.mean_prior_.shape != (d,):
            raise ValueError(
                f"mean_prior: shape {tuple(self.mean_prior_.shape)} does not match "
                f"{d} features; expected ({d},)"
            )
        if self.covariance_prior is None:
            self.covariance_prior_ = self._data_covariance(X)
            return
        cov = finite("covariance_prior", as_float64("covariance_prior", self.covariance_prior))
        if cov.shape != (d, d):
            raise ValueError(
                f"covariance_prior: shape {tuple(cov.shape)} does not match {d} features; "
                f"expected ({d}, {d})"
            )
        if not torch.allclose(cov, cov.T) or torch.linalg.cholesky_ex(cov).info != 0:
            raise ValueError(
                "covariance_prior: is not symmetric positive definite; expected W₀⁻¹ of a "
                "proper Wishart prior"
            )
        self.covariance_prior_ = cov

    def _data_covariance(self, X: torch.Tensor) -> torch.Tensor:
        """The default W₀⁻¹: the data covariance, as in scikit-learn, with its eigenvalues
        raised to at least ``reg_covar``. It is returned unchanged when none is below.

        A constant feature (or collinear ones) makes the data covariance singular, the
        Wishart prior improper and E_q log p(Λ) = −∞ (scikit-learn drops that term, so it
        does not see it). Raising its eigenvalues to ``reg_covar``, the floor scikit-learn
        puts under each S_k, keeps the prior proper and the bound finite, and is continuous
        in the data: a feature constant up to rounding gets the same prior as an exactly
        constant one.
        """
        cov = torch.atleast_2d(torch.cov(X.T))
        eigenvalues, vectors = torch.linalg.eigh(cov)
        if eigenvalues.min() >= self.reg_covar and torch.linalg.cholesky_ex(cov).info == 0:
            return cov
        if self.reg_covar == 0:
            raise ValueError(
                "reg_covar: 0, but X's covariance is singular (a constant feature, or "
                "collinear ones); expected reg_covar > 0 or a positive definite covariance_prior"
            )
        floored = eigenvalues.clamp(min=self.reg_covar)
        return (vectors * floored) @ vectors.T

    # -- initialization ------------------------------------------------------------------
    def _initial_resp(self, X: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, k = X.shape[0], self.n_components
        if self.init_params == "random":
            resp = torch.rand(n, k, generator=gen, dtype=torch.float64)
            return resp / resp.sum(1, keepdim=True)
        centers = X[torch.randint(n, (1,), generator=gen)]
        for _ in range(1, k):  # k-means++ seeding
            dist2 = torch.cdist(X, centers).min(1).values ** 2
            if dist2.sum() > 0:
                pick = torch.multinomial(dist2 / dist2.sum(), 1, generator=gen)
            else:  # every point is already a center: fewer distinct points than K
                pick = torch.randint(n, (1,), generator=gen)
            centers = torch.cat([centers, X[pick]])
        labels = None
        for _ in range(100):  # Lloyd steps, until no point changes cluster
            new_labels = torch.cdist(X, centers).argmin(1)
            if labels is not None and torch.equal(new_labels, labels):
                break
            labels = new_labels
            counts = torch.bincount(labels, minlength=k).to(X.dtype)
            sums = torch.zeros(k, X.shape[1], dtype=X.dtype).index_add_(0, labels, X)
            # An empty cluster keeps its center (it would otherwise jump to the origin).
            centers = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centers)
        distinct = int(labels.unique().numel())
        if distinct < k:  # scikit-learn's KMeans warns the same way
            warn_at_caller(
                f"Number of distinct clusters ({distinct}) found smaller than "
                f"n_clusters ({k}). Possibly due to duplicate points in X.",
                ConvergenceWarning,
            )
        resp = torch.zeros(n, k, dtype=X.dtype)
        resp[torch.arange(n), labels] = 1.0
        return resp

    # -- CAVI ----------------------------------------------------------------------------
    @staticmethod
    def _statistics(X: torch.Tensor, resp: torch.Tensor):
        """N_k, x̄_k and S_k of q(Z) = resp (Bishop eqs. 10.51-10.53)."""
        nk = resp.sum(0) + 10 * torch.finfo(resp.dtype).eps
        xk = (resp.T @ X) / nk[:, None]
        diff = X[None, :, :] - xk[:, None, :]
        sk = torch.einsum("nk,kni,knj->kij", resp, diff, diff) / nk[:, None, None]
        return nk, xk, sk

    def _m_step(self, X: torch.Tensor, resp: torch.Tensor):
        """Update q(π) and q(μ, Λ) for q(Z) = resp; return resp's statistics."""
        d = X.shape[1]
        stats = self._statistics(X, resp)
        nk, xk, sk = stats
        sk = sk + self.reg_covar * torch.eye(d, dtype=X.dtype)
        beta0, m0 = self.mean_precision_prior_, self.mean_prior_
        self.weight_concentration_ = self.weight_concentration_prior_ + nk
        self.mean_precision_ = beta0 + nk
        self.means_ = (beta0 * m0 + nk[:, None] * xk) / self.mean_precision_[:, None]
        self.degrees_of_freedom_ = self.degrees_of_freedom_prior_ + nk
        dm = xk - m0
        w_inv = (
            self.covariance_prior_
            + nk[:, None, None] * sk
            + (beta0 * nk / self.mean_precision_)[:, None, None] * dm[:, :, None] * dm[:, None, :]
        )
        self._w_inv = w_inv
        return stats

    def _expectations(self, d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """E ln π_k, E ln|Λ_k|, and ln|W_k|."""
        alpha = self.weight_concentration_
        e_log_pi = torch.digamma(alpha) - torch.digamma(alpha.sum())
        logdet_w = -torch.linalg.slogdet(self._w_inv)[1]
        _, digammas = _mvlgamma_terms(self.degrees_of_freedom_, d)
        e_logdet_lambda = digammas + d * math.log(2) + logdet_w
        return e_log_pi, e_logdet_lambda, logdet_w

    def _log_rho(self, X: torch.Tensor) -> torch.Tensor:
        d = X.shape[1]
        e_log_pi, e_logdet, _ = self._expectations(d)
        chol_w = torch.linalg.cholesky(torch.linalg.inv(self._w_inv))  # W_k = L Lᵀ
        diff = X[None, :, :] - self.means_[:, None, :]
        maha = (diff @ chol_w).pow(2).sum(-1).T  # [N, K]: (x − m_k)ᵀ W_k (x − m_k)
        return (
            e_log_pi
            + 0.5 * e_logdet
            - 0.5 * d * _LOG_2PI
            - 0.5 * (d / self.mean_precision_ + self.degrees_of_freedom_ * maha)
        )

    def _elbo(self, X: torch.Tensor, resp: torch.Tensor, stats=None) -> float:
        """L(q(Z) = resp, current q(π, μ, Λ)): Bishop eqs. 10.70-10.77 with every constant.

        ``stats`` may pass resp's (N_k, x̄_k, S_k) when they are already computed."""
        d = X.shape[1]
        alpha0, beta0 = self.weight_concentration_prior_, self.mean_precision_prior_
        nu0, m0 = self.degrees_of_freedom_prior_, self.mean_prior_
        w0_inv = self.covariance_prior_
        alpha, beta, m, nu = (
            self.weight_concentration_,
            self.mean_precision_,
            self.means_,
            self.degrees_of_freedom_,
        )
        nk, xk, sk = self._statistics(X, resp) if stats is None else stats
        w = torch.linalg.inv(self._w_inv)
        e_log_pi, e_logdet, logdet_w = self._expectations(d)
        k = self.n_components

        dxm = xk - m
        e_log_px = (
            0.5
            * (
                nk
                * (
                    e_logdet
                    - d / beta
                    - nu * torch.einsum("kij,kji->k", sk, w)
                    - nu * torch.einsum("ki,kij,kj->k", dxm, w, dxm)
                    - d * _LOG_2PI
                )
            ).sum()
        )
        e_log_pz = (resp * e_log_pi).sum()
        log_c0 = math.lgamma(k * alpha0) - k * math.lgamma(alpha0)
        e_log_ppi = log_c0 + (alpha0 - 1) * e_log_pi.sum()
        dm0 = m - m0
        logdet_w0 = -torch.linalg.slogdet(w0_inv)[1]
        log_b0 = _log_wishart_norm(
            logdet_w0.expand(k), torch.full((k,), nu0, dtype=torch.float64), d
        )
        e_log_pmu_lambda = (
            0.5
            * (
                d * math.log(beta0 / (2 * math.pi))
                + e_logdet
                - d * beta0 / beta
                - beta0 * nu * torch.einsum("ki,kij,kj->k", dm0, w, dm0)
            ).sum()
            + log_b0.sum()
            + (nu0 - d - 1) / 2 * e_logdet.sum()
            - 0.5 * (nu * torch.einsum("ij,kji->k", w0_inv, w)).sum()
        )
        e_log_qz = torch.special.xlogy(resp, resp).sum()
        log_c = torch.lgamma(alpha.sum()) - torch.lgamma(alpha).sum()
        e_log_qpi = ((alpha - 1) * e_log_pi).sum() + log_c
        log_b = _log_wishart_norm(logdet_w, nu, d)
        entropy_lambda = -log_b - (nu - d - 1) / 2 * e_logdet + nu * d / 2
        e_log_qmu_lambda = (
            0.5 * e_logdet + d / 2 * torch.log(beta / (2 * math.pi)) - d / 2 - entropy_lambda
        ).sum()
        return float(
            e_log_px
            + e_log_pz
            + e_log_ppi
            + e_log_pmu_lambda
            - e_log_qz
            - e_log_qpi
            - e_log_qmu_lambda
        )

    @on_the_cpu
    def fit(self, X, y=None) -> BayesianGaussianMixture:
        """Fit by CAVI from ``n_init`` initializations; keep the one with the best ELBO."""
        X = self._check(X)
        self._priors(X)
        seed = seed_of("random_state", self.random_state)
        gen = torch.Generator().manual_seed(int(np.random.default_rng(seed).integers(2**31)))
        best = None
        for _ in range(self.n_init):
            resp = self._initial_resp(X, gen)
            bounds, converged = [], False
            for iteration in range(self.max_iter):
                if iteration:
                    resp = torch.softmax(self._log_rho(X), dim=1)  # E-step
                stats = self._m_step(X, resp)  # M-step: q(π), q(μ, Λ) given q(Z) = resp
                bounds.append(self._elbo(X, resp, stats))
                if len(bounds) > 1 and abs(bounds[-1] - bounds[-2]) < self.tol:
                    converged = True
                    break
            if best is None or bounds[-1] > best[0][-1]:
                best = (bounds, converged, resp)
        bounds, converged, resp = best
        self._m_step(X, resp)
        self.lower_bounds_, self.lower_bound_ = bounds, bounds[-1]
        self.n_iter_, self.converged_ = len(bounds), converged
        if not converged:
            warn_unconverged("BayesianGaussianMixture", bounds, self.max_iter, self.tol)
        self.weights_ = self.weight_concentration_ / self.weight_concentration_.sum()
        self.covariances_ = self._w_inv / self.degrees_of_freedom_[:, None, None]
        self.precisions_ = torch.linalg.inv(self.covariances_)
        return self

    def _new_points(self, X) -> torch.Tensor:
        """X as float64 [n_samples, D] of the fitted D, or NotFittedError / ValueError."""
        if not hasattr(self, "_w_inv"):
            raise NotFittedError(
                "BayesianGaussianMixture: not fitted yet; call fit(X) before predicting"
            )
        d = self.means_.shape[1]
        X = as_float64("X", X)
        if X.dim() != 2 or X.shape[1] != d:
            raise ValueError(f"X: shape {tuple(X.shape)} is not [n_samples, {d}]")
        return finite("X", X)

    @on_the_cpu
    def predict_proba(self, X) -> torch.Tensor:
        """q(z_n = k) for new points: the E-step responsibilities."""
        return torch.softmax(self._log_rho(self._new_points(X)), dim=1)

    @on_the_cpu
    def score_samples(self, X) -> torch.Tensor:
        """log p(x | data) of each point, ``[n_samples]`` float64 in nats: the posterior
        predictive density under q, Σ_k E_q[π_k] St(x | m_k, (1 + β_k) / ((ν_k + 1 − D) β_k)
        · W_k⁻¹, ν_k + 1 − D), a mixture of multivariate Student-t's (Bishop 2006, eq.
        10.81). Not scikit-learn's ``score_samples``, which puts q's point estimates into
        one Gaussian mixture; this one integrates over q, the parameters' uncertainty
        included. NotFittedError before ``fit``; ValueError for points of another width."""
        X = self._new_points(X)
        d = X.shape[1]
        nu, beta = self.degrees_of_freedom_, self.mean_precision_
        df = nu + 1 - d
        spread = ((1 + beta) / (df * beta))[:, None, None] * self._w_inv
        student = dist.MultivariateStudentT(
            df, self.means_, torch.linalg.cholesky(spread), validate_args=False
        )
        log_weights = self.weight_concentration_.log() - self.weight_concentration_.sum().log()
        return torch.logsumexp(student.log_prob(X.unsqueeze(1)) + log_weights, dim=1)

    @on_the_cpu
    def score(self, X, y=None) -> float:
        """The mean of :meth:`score_samples` over X, in nats per point (scikit-learn's
        ``score`` of a density model, for ``cross_val_score`` and ``GridSearchCV``)."""
        return float(self.score_samples(X).mean())

    @on_the_cpu
    def variational_distributions(self, X=None) -> dict:
        """The fitted factors keyed by the sites of ``models.gmm.GaussianMixtureModel`` with
        ``precision_parameterization="wishart"``: q(π) Dirichlet (``"weights"``), q(Λ_k)
        Wishart(W_k, ν_k) (``"precisions"``), q(μ_k) its multivariate Student-t marginal
        (ν_k − D + 1 degrees of freedom; ``"means"``), and with ``X`` q(z_n) Categorical
        (``"assignment"``, the E-step responsibilities of X). Drawn independently, μ_k and
        Λ_k lose the coupling of their joint Normal-Wishart factor.
        """
        if not hasattr(self, "_w_inv"):
            raise NotFittedError(
                "BayesianGaussianMixture: not fitted yet; call fit(X) before "
                "variational_distributions()"
            )
        d = self.means_.shape[1]  # copies: an edit of q leaves the fit as it is (tester DL)
        nu, beta = self.degrees_of_freedom_.clone(), self.mean_precision_
        scale = torch.linalg.inv(self._w_inv)
        t_precision = ((nu - d + 1) * beta)[:, None, None] * scale
        out = {
            "weights": dist.Dirichlet(self.weight_concentration_.clone()),
            "precisions": dist.Wishart(nu, covariance_matrix=scale),
            "means": dist.MultivariateStudentT(
                nu - d + 1,
                self.means_.clone(),
                torch.linalg.cholesky(torch.linalg.inv(t_precision)),
            ),
        }
        if X is not None:
            out["assignment"] = dist.Categorical(probs=self.predict_proba(X))
        return out

    @on_the_cpu
    def variational_guide(self):
        """q(π, μ, Λ) as a Pyro guide over ``models.gmm.GaussianMixtureModel``'s sites with
        ``precision_parameterization="wishart"``: π from its Dirichlet, then in the
        ``components`` plate (dim −1, the model's) Λ_k from its Wishart and μ_k given
        that draw from N(m_k, (β_k Λ_k)⁻¹), the joint Normal-Wishart factor the fit holds
        (Bishop 2006, eq. 10.59). ``elbo_estimate``, ``psis_khat`` and
        ``to_inference_data`` take the fit and draw this; from
        :meth:`variational_distributions`' marginals, drawn independently, μ_k and Λ_k lost
        their coupling and scored another q (tester FJ). The assignment is not drawn: the
        model sums it out, so ``elbo_estimate`` gives the bound of q(π, μ, Λ) with z summed
        out, at or above ``lower_bound_`` (which takes z from q(z) too).

        Raises:
            sklearn.exceptions.NotFittedError (a ValueError): not fitted yet."""
        if not hasattr(self, "_w_inv"):
            raise NotFittedError(
                "BayesianGaussianMixture: not fitted yet; call fit(X) before variational_guide()"
            )
        concentration = self.weight_concentration_.clone()
        nu, beta, means = (
            self.degrees_of_freedom_.clone(),
            self.mean_precision_.clone(),
            (self.means_.clone()),
        )
        scale = torch.linalg.inv(self._w_inv)

        def guide(*args, **kwargs) -> None:
            # in the data's floating dtype, the model's (tester FK: float32 X met float64
            # draws in the model's Wishart)
            given = [*args, *kwargs.values()]  # (tester FL: x=X by keyword was missed)
            floats = [a for a in given if torch.is_tensor(a) and a.is_floating_point()]
            dtype = floats[0].dtype if floats else torch.float64
            pyro.sample("weights", dist.Dirichlet(concentration.to(dtype)))
            with pyro.plate("components", means.shape[0], dim=-1):
                wishart = dist.Wishart(nu.to(dtype), covariance_matrix=scale.to(dtype))
                precision = pyro.sample("precisions", wishart)
                pyro.sample(
                    "means",
                    dist.MultivariateNormal(
                        means.to(dtype), precision_matrix=beta.to(dtype)[:, None, None] * precision
                    ),
                )

        guide.__name__ = "BayesianGaussianMixture.variational_guide"
        return guide

    @on_the_cpu
    def predict(self, X) -> torch.Tensor:
        """The most responsible component of each point."""
        return self.predict_proba(X).argmax(1)
