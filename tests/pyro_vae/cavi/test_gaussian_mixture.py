import math

import numpy as np
import pyro
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning, NotFittedError
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


def test_converged_means_one_more_iteration_moves_nothing(separated):
    kwargs = dict(n_components=3, random_state=0, reg_covar=0.0)
    fit = BayesianGaussianMixture(tol=1e-8, max_iter=1000, **kwargs).fit(separated)
    assert fit.converged_
    # tol=0 never stops early, so these run exactly n_iter_ and n_iter_ + 1 iterations
    # from the same k-means start.
    same = BayesianGaussianMixture(tol=0.0, max_iter=fit.n_iter_, **kwargs).fit(separated)
    more = BayesianGaussianMixture(tol=0.0, max_iter=fit.n_iter_ + 1, **kwargs).fit(separated)
    assert not same.converged_ and same.lower_bound_ == fit.lower_bound_
    # The last iteration raised the ELBO by < tol, and that rise is Σ KL(old ‖ new) ≥
    # 2 TV² ≥ 2 max |Δr_nk|² (Pinsker), so it moved no responsibility by more than
    # sqrt(tol / 2) = 7e-5. Near a fixed point the next iteration moves them less; we allow
    # twice that bound, sqrt(2 tol). (Measured: 1.2e-6.)
    moved = (more.predict_proba(separated) - same.predict_proba(separated)).abs().max()
    assert moved <= math.sqrt(2 * 1e-8)


def _sorted(means, weights, column=0):
    order = np.argsort(np.asarray(means)[:, column], kind="stable")
    return np.asarray(means)[order], np.asarray(weights)[order]


def test_fewer_distinct_points_than_components_fit_as_in_scikit_learn():
    # 3 distinct points for 5 components: k-means++ runs out of new centers, and scikit-
    # learn's KMeans warns and leaves two components empty. Ours crashed in seeding.
    points = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    counts = np.array([10, 7, 4])
    X = np.repeat(points, counts, axis=0)
    kwargs = dict(n_components=5, tol=1e-8, max_iter=1000, random_state=0)
    message = r"Number of distinct clusters \(3\) found smaller than n_clusters \(5\)"
    with pytest.warns(ConvergenceWarning, match=message):
        sk = SklearnBGM(weight_concentration_prior_type="dirichlet_distribution", **kwargs).fit(X)
    with pytest.warns(ConvergenceWarning, match=message):
        ours = BayesianGaussianMixture(**kwargs).fit(X)
    assert ours.converged_ and math.isfinite(ours.lower_bound_)
    # Sorted on x + 10 y, the empty components (at the prior mean) tie and are equal.
    key = np.array([[1.0], [10.0]])
    (ours_means, ours_weights), (sk_means, sk_weights) = (
        _sorted(np.column_stack([m, m @ key]), w, column=2)
        for m, w in ((ours.means_.numpy(), ours.weights_.numpy()), (sk.means_, sk.weights_))
    )
    np.testing.assert_allclose(ours_means, sk_means, atol=1e-6)
    np.testing.assert_allclose(ours_weights, sk_weights, atol=1e-6)


def test_a_constant_feature_fits_as_in_scikit_learn():
    # The default covariance prior is the data covariance; a constant feature makes it
    # singular, the Wishart prior improper and our bound −∞ (it never converged).
    rng = np.random.default_rng(2)
    X = np.concatenate([rng.normal(0, 1, (40, 2)), rng.normal([12, 0], 1, (30, 2))])
    X = np.column_stack([X, np.full(len(X), 3.0)])
    kwargs = dict(n_components=2, tol=1e-8, max_iter=1000, random_state=0)
    sk = SklearnBGM(weight_concentration_prior_type="dirichlet_distribution", **kwargs).fit(X)
    ours = BayesianGaussianMixture(**kwargs).fit(X)
    assert sk.converged_ and ours.converged_ and math.isfinite(ours.lower_bound_)
    # Our prior's eigenvalue in the constant direction is raised to reg_covar (scikit-
    # learn's is 0, with the prior's normalizer dropped from its bound). With clusters 12
    # standard deviations apart no responsibility is in doubt, so that prior shifts nothing
    # visible: 1e-6 is far above what it moves and far below any other fit.
    (ours_means, ours_weights), (sk_means, sk_weights) = (
        _sorted(m, w)
        for m, w in ((ours.means_.numpy(), ours.weights_.numpy()), (sk.means_, sk.weights_))
    )
    np.testing.assert_allclose(ours_means, sk_means, atol=1e-6)
    np.testing.assert_allclose(ours_weights, sk_weights, atol=1e-6)
    # The model with default priors is translation-equivariant, so shifting the data
    # leaves the ELBO unchanged. This shift makes the constant column's variance round to
    # 2e-34 instead of 0, which must get the same prior (to float rounding of a bound of
    # magnitude ~1e2; left as the data covariance, that prior put the bound 189 nats lower).
    shifted = BayesianGaussianMixture(**kwargs).fit(X + np.array([0.0, 0.0, -2.9]))
    assert shifted.lower_bound_ == pytest.approx(ours.lower_bound_, abs=1e-8)
    with pytest.raises(ValueError, match="reg_covar: 0, but X's covariance is singular"):
        BayesianGaussianMixture(2, reg_covar=0.0).fit(X)


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
        (np.zeros((1, 2)), {}, "X: 1 sample; expected at least 2"),
        (np.zeros((4, 0)), {}, "n_features ≥ 1"),
        (
            np.array([[0.0, np.inf], [1.0, np.nan], [2.0, 1.0]]),
            {},
            "X: 1 of its 6 entries is NaN and 1 infinite",
        ),
        (np.eye(3), {"n_components": 2.0}, "n_components: 2.0 is not a positive integer"),
        (np.eye(3), {"tol": -1.0}, "tol: -1.0 is not a finite non-negative number"),
        (np.eye(3), {"reg_covar": -1e-6}, "reg_covar: -1e-06"),
        (np.eye(3), {"weight_concentration_prior": 0.0}, "weight_concentration_prior: 0.0"),
        (np.eye(3), {"mean_precision_prior": -1.0}, "mean_precision_prior: -1.0"),
        (np.eye(3), {"mean_prior": [0.0, 0.0]}, r"mean_prior: shape \(2,\) does not match 3"),
        (
            np.eye(3),
            {"covariance_prior": -np.eye(3)},
            "covariance_prior: is not symmetric positive",
        ),
        (np.eye(3), {"covariance_prior": np.eye(2)}, r"covariance_prior: shape \(2, 2\)"),
        # tester BO: NumPy's "expected non-negative integer", and "probability tensor
        # contains inf" part way through a fit of data near 1e160
        (
            np.eye(3),
            {"random_state": -3},
            "random_state: -3 is not a seed; expected None, an integer",
        ),
        (np.eye(3), {"random_state": 1.5}, "random_state: 1.5 is not a seed"),
        (np.eye(3) * 1e160, {}, "X: values up to 1e.160, whose squares summed over its 9"),
    ],
)
def test_bad_input_is_named(X, kwargs, message):
    with pytest.raises(ValueError, match=message):
        BayesianGaussianMixture(**kwargs).fit(X)


def test_predicting_needs_a_fit_and_matching_points(separated):
    with pytest.raises(NotFittedError, match="not fitted yet"):
        BayesianGaussianMixture(2).predict(separated)
    fit = BayesianGaussianMixture(2, random_state=0).fit(separated)
    with pytest.raises(ValueError, match=r"X: shape \(4, 3\) is not \[n_samples, 2\]"):
        fit.predict_proba(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="X: 1 of its 2 entries is NaN"):
        fit.predict(np.array([[np.nan, 0.0]]))


def test_variational_distributions_are_the_fitted_factors_by_site(separated):
    with pytest.raises(NotFittedError, match="not fitted yet"):
        BayesianGaussianMixture(3).variational_distributions()
    fit = BayesianGaussianMixture(3, random_state=0).fit(separated)
    q = fit.variational_distributions(separated[:5])
    assert torch.allclose(q["weights"].concentration, fit.weight_concentration_)
    assert torch.allclose(q["precisions"].mean, fit.precisions_)  # E[Λ_k] = ν_k W_k
    assert torch.allclose(q["means"].loc, fit.means_)
    # Cov(μ_k) = E[(β_k Λ_k)⁻¹] = W_k⁻¹ / (β_k (ν_k − D − 1)): the Student-t's variances
    # (Pyro's MultivariateStudentT.covariance_matrix is its scale matrix, not its covariance)
    expected = fit._w_inv / (fit.mean_precision_ * (fit.degrees_of_freedom_ - 3))[:, None, None]
    assert torch.allclose(q["means"].variance, expected.diagonal(dim1=-2, dim2=-1))
    assert torch.allclose(q["assignment"].probs, fit.predict_proba(separated[:5]))


def test_a_numpy_random_state_seeds_as_the_integer_it_draws(separated):
    """scikit-learn's random_state convention (tester EP: a RandomState was refused): a
    RandomState fits as the integer it draws next, and a second fit from the same
    instance draws on."""
    stream = np.random.RandomState(3)
    drawn = np.random.RandomState(3).randint(2**31 - 1)
    fit = BayesianGaussianMixture(3, init_params="random", random_state=stream).fit(separated)
    same = BayesianGaussianMixture(3, init_params="random", random_state=drawn).fit(separated)
    assert fit.lower_bounds_ == same.lower_bounds_
    assert stream.randint(2**31 - 1) == np.random.RandomState(3).randint(2**31 - 1, size=2)[1]


@pytest.mark.filterwarnings("ignore:Singular sample detected")  # torch's Wishart, redrawn
def test_score_samples_is_the_posterior_predictive_density_under_q():
    """log p(x* | X) = log E_q[Σ_k π_k N(x* | μ_k, Λ_k⁻¹)], estimated by drawing π, Λ_k and
    μ_k | Λ_k from q's own factors (Dirichlet, Wishart, Normal given Λ_k): the Student-t
    mixture agrees within 5 standard errors of that average (S = 200,000 draws; the
    standard error of log of a mean is sd / (mean √S)), tester EP: there was no score."""
    rng = np.random.default_rng(2)
    X = np.concatenate([rng.normal(c, 1.0, size=(12, 2)) for c in ([0, 0], [4, 0])])
    fit = BayesianGaussianMixture(2, random_state=0).fit(X)
    points = torch.tensor([[0.0, 0.0], [2.0, 1.0], [4.0, -3.0]], dtype=torch.float64)
    torch.manual_seed(0)
    draws = 200_000
    weights = Dirichlet(fit.weight_concentration_).sample((draws,))
    w = torch.linalg.inv(fit.covariances_ * fit.degrees_of_freedom_[:, None, None])
    precisions = Wishart(fit.degrees_of_freedom_, covariance_matrix=w).sample((draws,))
    means = MultivariateNormal(
        fit.means_, precision_matrix=fit.mean_precision_[:, None, None] * precisions
    ).sample()
    likelihood = MultivariateNormal(means, precision_matrix=precisions)
    densities = (weights[:, None, :] * likelihood.log_prob(points[:, None, None, :]).exp()
                 .transpose(0, 1)).sum(-1)  # fmt: skip
    mean, sd = densities.mean(0), densities.std(0)
    error = 5 * sd / (mean * math.sqrt(draws))
    scores = fit.score_samples(points)
    assert scores.shape == (3,)
    assert (scores - mean.log()).abs().lt(error).all(), (scores, mean.log(), error)
    assert fit.score(points) == pytest.approx(float(scores.mean()), rel=1e-12)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        BayesianGaussianMixture(2).score_samples(points)
    with pytest.raises(ValueError, match=r"X: shape \(2, 3\) is not \[n_samples, 2\]"):
        fit.score(np.zeros((2, 3)))


@pytest.mark.filterwarnings("ignore:Singular sample detected")  # torch's Wishart, redrawn
def test_the_variational_guide_is_the_joint_normal_wishart_q():
    """At a CAVI fixed point q(θ) ∝ exp E_q(z)[log p(X, z, θ)], so with z at the fit's
    responsibilities log p(θ) + E_q(z)[log p(X, z | θ) − log q(z)] − log q(θ) is the same
    number, ``lower_bound_``, at every θ drawn from q itself (Bishop 2006, eqs. 10.59 and
    10.70). The guide every diagnostic draws (``as_guide``) drew μ_k and Λ_k independently
    from their marginals (tester FJ), where this spread by whole nats; drawn jointly each
    value equals the bound to float64 rounding."""
    from pyro import poutine

    from models.gmm import GaussianMixtureModel
    from pyro_vae.guides.fixed import as_guide

    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(c, 1.0, size=(20, 2)) for c in ([0, 0], [4, 0])])
    fit = BayesianGaussianMixture(2, random_state=0, tol=1e-10, reg_covar=0.0).fit(X)
    prior = GaussianMixtureModel.from_data(torch.tensor(X), 2, precision_parameterization="wishart")
    x, r = torch.tensor(X), fit.predict_proba(X)
    torch.manual_seed(0)
    values = []
    for _ in range(50):
        trace = poutine.trace(as_guide(fit)).get_trace()
        w, precision, mu = (trace.nodes[s]["value"] for s in ("weights", "precisions", "means"))
        log_p = Dirichlet(torch.full((2,), prior.weight_concentration_prior)).log_prob(w)
        df = torch.tensor(prior.degrees_of_freedom_prior, dtype=torch.float64)
        log_p += Wishart(df, scale_tril=prior.prior_precision_tril).log_prob(precision).sum()
        mean_precision = prior.mean_precision_prior * precision
        log_p += (
            MultivariateNormal(prior.mean_prior, precision_matrix=mean_precision).log_prob(mu).sum()
        )
        log_x = MultivariateNormal(mu, precision_matrix=precision).log_prob(x[:, None, :])
        expected_z = (r * (w.log() + log_x - r.clamp_min(1e-300).log())).sum()
        values.append(float(log_p + expected_z - trace.log_prob_sum()))
    # not float64 rounding alone: the fit stops within tol = 1e-10 nats of its fixed point,
    # where q(θ) and q(z) still differ from each other's update by some 1e-6 (measured:
    # values within 6e-6 nats of the bound, 4e-8 relative); off the joint q, whole nats
    assert max(abs(v - fit.lower_bound_) for v in values) < 1e-7 * abs(fit.lower_bound_)


@pytest.mark.filterwarnings("ignore:Singular sample detected")  # torch's Wishart, redrawn
def test_the_variational_guide_draws_in_the_data_s_dtype():
    """Tester FK: float32 X (a float32 model from ``from_data``) met the fit's float64 draws
    in the model's Wishart ("Expected b and A to have the same dtype"). The float32 and
    float64 estimates of the same bound agree within their Monte Carlo error."""
    from models.gmm import GaussianMixtureModel
    from pyro_vae import elbo_estimate

    X = torch.tensor([[0.0, 0.1], [0.3, -0.2], [3.0, 2.9], [3.2, 3.4], [1.4, 1.0]])
    fit = BayesianGaussianMixture(n_components=2, random_state=0).fit(X)
    estimates = []
    for x in (X, X.double()):
        model = GaussianMixtureModel.from_data(x, 2, precision_parameterization="wishart")
        pyro.set_rng_seed(0)
        estimates.append(elbo_estimate(model, fit, x, num_samples=2000))
    (single, se_single), (double, se_double) = estimates
    assert abs(single - double) < 4 * math.hypot(se_single, se_double)
    pyro.set_rng_seed(0)  # x by keyword too (tester FL: only positional data were read)
    model = GaussianMixtureModel.from_data(X, 2, precision_parameterization="wishart")
    assert elbo_estimate(model, fit, x=X, num_samples=2000) == (single, se_single)
