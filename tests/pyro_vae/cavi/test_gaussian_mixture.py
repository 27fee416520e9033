import math

import numpy as np
import pytest
import torch
from sklearn.mixture import BayesianGaussianMixture as SklearnBGM
from torch.distributions import Dirichlet, MultivariateNormal, Wishart

from pyro_vae.cavi import BayesianGaussianMixture


@pytest.fixture(scope="module")
def separated():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    return np.concatenate(
        [
            rng.normal(c, [1.0, 0.5], size=(n, 2))
            for c, n in zip(centers, [300, 200, 100], strict=True)
        ]
    )


def _order(means):
    means = np.asarray(means)
    return np.argsort(means[:, 0] + 10 * means[:, 1])


def test_matches_scikit_learn_on_the_same_priors(separated):
    kwargs = dict(
        n_components=3,
        tol=1e-8,
        max_iter=1000,
        random_state=0,
        weight_concentration_prior=0.5,
        mean_precision_prior=0.8,
        degrees_of_freedom_prior=3.0,
    )
    sk = SklearnBGM(weight_concentration_prior_type="dirichlet_distribution", **kwargs)
    sk.fit(separated)
    ours = BayesianGaussianMixture(**kwargs).fit(separated)
    a, b = _order(sk.means_), _order(ours.means_)
    np.testing.assert_allclose(ours.weights_.numpy()[b], sk.weights_[a], atol=1e-8)
    np.testing.assert_allclose(ours.means_.numpy()[b], sk.means_[a], atol=1e-8)
    np.testing.assert_allclose(ours.covariances_.numpy()[b], sk.covariances_[a], atol=1e-8)
    np.testing.assert_allclose(
        ours.predict_proba(separated).numpy()[:, b], sk.predict_proba(separated)[:, a], atol=1e-8
    )
    assert ours.converged_


def test_the_bound_never_decreases(separated):
    fit = BayesianGaussianMixture(
        5, tol=1e-10, max_iter=300, reg_covar=0.0, init_params="random", random_state=3
    ).fit(separated)
    bounds = torch.tensor(fit.lower_bounds_)
    assert len(bounds) > 5
    assert (bounds[1:] - bounds[:-1] >= -1e-8).all()


# torch's Wishart sampler redraws the rare numerically singular sample and warns.
@pytest.mark.filterwarnings("ignore:Singular sample detected")
def test_the_elbo_keeps_every_constant():
    # Monte Carlo of E_q[log p(X, Z, π, μ, Λ) − log q] over (π, μ, Λ), with the sum over Z
    # done exactly against q(Z); it must agree with the closed form within 4 standard errors.
    rng = np.random.default_rng(1)
    X = torch.as_tensor(np.concatenate([rng.normal(0, 1, (15, 2)), rng.normal(4, 1, (10, 2))]))
    fit = BayesianGaussianMixture(2, tol=1e-9, max_iter=200, reg_covar=0.0, random_state=0).fit(X)
    fitted_to = fit.predict_proba(X)
    fit._m_step(X, fitted_to)
    # At q(Z) = the responsibilities q(θ) was fitted to, log p − log q is constant in θ.
    # Evaluating at another q(Z) gives the Monte Carlo something to average.
    for resp, exact_in_theta in ((fitted_to, True), (0.8 * fitted_to + 0.1, False)):
        closed_form = fit._elbo(X, resp)
        samples = _monte_carlo_elbo(fit, X, resp)
        se = samples.std().item() / math.sqrt(len(samples))
        if exact_in_theta:
            assert se < 1e-10
            assert closed_form == pytest.approx(samples.mean().item(), abs=1e-9)
        else:
            assert 1e-4 < se < 0.2  # the check has variance to resolve, and resolution
            assert closed_form == pytest.approx(samples.mean().item(), abs=4 * se)


def _monte_carlo_elbo(fit, X, resp, s=20000):
    torch.manual_seed(0)
    k = fit.n_components
    w = torch.linalg.inv(fit._w_inv)
    lam = Wishart(fit.degrees_of_freedom_, covariance_matrix=w).sample((s,))  # [S, K, D, D]
    mu = MultivariateNormal(
        fit.means_, precision_matrix=fit.mean_precision_[:, None, None] * lam
    ).sample()
    pi = Dirichlet(fit.weight_concentration_).sample((s,))
    log_lik = MultivariateNormal(mu[:, None], precision_matrix=lam[:, None]).log_prob(
        X[None, :, None, :]
    )  # [S, N, K]
    e_z = (resp * (pi.log()[:, None, :] + log_lik)).sum((1, 2)) - torch.special.xlogy(
        resp, resp
    ).sum()
    alpha0 = torch.full((k,), fit.weight_concentration_prior_, dtype=torch.float64)
    prior = (
        Dirichlet(alpha0).log_prob(pi)
        + MultivariateNormal(fit.mean_prior_, precision_matrix=fit.mean_precision_prior_ * lam)
        .log_prob(mu)
        .sum(1)
        + Wishart(
            torch.tensor(fit.degrees_of_freedom_prior_, dtype=torch.float64),
            covariance_matrix=torch.linalg.inv(fit.covariance_prior_),
        )
        .log_prob(lam)
        .sum(1)
    )
    q = (
        Dirichlet(fit.weight_concentration_).log_prob(pi)
        + MultivariateNormal(fit.means_, precision_matrix=fit.mean_precision_[:, None, None] * lam)
        .log_prob(mu)
        .sum(1)
        + Wishart(fit.degrees_of_freedom_, covariance_matrix=w).log_prob(lam).sum(1)
    )
    return e_z + prior - q


@pytest.mark.parametrize(
    "X, kwargs, message",
    [
        (np.zeros(5), {}, "X: shape"),
        (np.zeros((2, 2)), {"n_components": 3}, "fewer than"),
        (np.full((4, 2), np.nan), {}, "NaN"),
        (np.zeros((4, 2)), {"init_params": "pca"}, "init_params: 'pca'"),
        (
            np.random.default_rng(0).normal(size=(9, 3)),
            {"degrees_of_freedom_prior": 1.0},
            "must exceed n_features - 1 = 2",
        ),
    ],
)
def test_bad_input_is_named(X, kwargs, message):
    with pytest.raises(ValueError, match=message):
        BayesianGaussianMixture(**kwargs).fit(X)
