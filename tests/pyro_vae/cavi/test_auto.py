import itertools
import math
import re
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.ops.indexing import Vindex
from sklearn.exceptions import NotFittedError

from models.regression import BayesianRegression
from pyro_vae.cavi import AutoCAVI, BayesianLinearRegression, NotConjugateError
from pyro_vae.cavi.refusals import warn_imprecise
from tests.pyro_vae.cavi.ard import ard_vb
from tests.pyro_vae.cavi.factors import group_slopes, group_slopes_evidence, plated_regression
from tests.pyro_vae.cavi.float64 import F64, t


@pytest.fixture
def regression_data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 3, generator=g, dtype=F64)
    y = X @ t([1.0, -2.0, 0.5]) + 0.7 * torch.randn(30, generator=g, dtype=F64)
    return X, y


def relative(a, b):
    a, b = torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64)
    return float(((a - b).abs() / b.abs().clamp_min(1e-300)).max())


def test_reproduces_bayesian_linear_regression_at_its_fixed_point(regression_data):
    X, y = regression_data
    a0, b0, lam0 = 2.0, 1.5, 0.5
    blr = BayesianLinearRegression(a0, b0, lam0, tol=1e-13).fit(X, y)
    # BLR starts from E[τ] = a₀/b₀, i.e. q(τ) = its prior; q(w) is updated first.
    auto = AutoCAVI(
        BayesianRegression(a0, b0, lam0), init={"precision": dist.Gamma(t(a0), t(b0))}, tol=1e-13
    ).fit(X, y)
    q = auto.variational_distributions()
    assert auto.converged_ and blr.converged_
    assert relative(auto.lower_bound_, blr.lower_bound_) < 1e-6
    assert relative(q["weights"].mean, blr.coef_) < 1e-6
    assert relative(q["weights"].covariance_matrix, blr.coef_covariance_) < 1e-6
    assert relative(q["precision"].concentration, blr.precision_shape_) < 1e-6
    assert relative(q["precision"].rate, blr.precision_rate_) < 1e-6
    assert auto.lower_bound_ <= blr.log_evidence_
    assert auto.markov_blankets_ == {
        "precision": ("precision", "weights", "y"),
        "weights": ("weights", "y"),
    }


def test_plated_weights_reproduce_bayesian_linear_regression(regression_data):
    """models/regression.py with its weights declared in a features plate (w_d | τ ~ N(0,
    (τλ₀)⁻¹), read whole by every datum): fitted as one vector over the plate, AutoCAVI
    reproduces the hand-written class as on the vector model (bound and q to 1e-6), and
    its guide scores the bound: Pyro's Trace_ELBO, under its shape checks, averages
    log p − log q over 4,000 vectorized draws to within 4 standard errors of it."""
    X, y = regression_data
    a0, b0, lam0 = 2.0, 1.5, 0.5

    def plated(X, y):
        tau = pyro.sample("precision", dist.Gamma(t(a0), t(b0)))
        with pyro.plate("features", X.shape[1]):
            w = pyro.sample("weights", dist.Normal(t(0.0), (tau * lam0).rsqrt()))
        with pyro.plate("data", X.shape[0]):
            pyro.sample("y", dist.Normal((X * w.unsqueeze(-2)).sum(-1), tau.rsqrt()), obs=y)

    blr = BayesianLinearRegression(a0, b0, lam0, tol=1e-13).fit(X, y)
    auto = AutoCAVI(plated, init={"precision": dist.Gamma(t(a0), t(b0))}, tol=1e-13).fit(X, y)
    q = auto.variational_distributions()
    assert auto.plates_as_events_ == {"weights": "features"}
    assert relative(auto.lower_bound_, blr.lower_bound_) < 1e-6
    assert relative(q["weights"].mean, blr.coef_) < 1e-6
    assert relative(q["weights"].covariance_matrix, blr.coef_covariance_) < 1e-6
    assert relative(q["precision"].rate, blr.precision_rate_) < 1e-6
    pyro.set_rng_seed(0)
    draws = 4000
    elbo = pyro.infer.Trace_ELBO(num_particles=draws, vectorize_particles=True)
    guide = auto.variational_guide()
    with pyro.validation_enabled(True):
        particles = [-elbo.loss(plated, guide, X, y) for _ in range(2)]  # 2 × 4,000 draws
    log_w = torch.stack([
        pyro.poutine.trace(pyro.poutine.replay(plated, trace=tr)).get_trace(X, y).log_prob_sum()
        - tr.log_prob_sum()
        for tr in [pyro.poutine.trace(guide).get_trace(X, y) for _ in range(400)]
    ])  # fmt: skip
    stderr = float(log_w.std()) / math.sqrt(2 * draws)
    assert abs(sum(particles) / 2 - auto.lower_bound_) < 4 * stderr


def test_every_sweep_matches_bayesian_linear_regression(regression_data):
    # BLR's bound after iteration k is at (q_k(τ), q(w) optimal for q_k(τ)): AutoCAVI
    # reaches the same states when q(w) starts at BLR's first q(w) and q(τ) is updated first.
    X, y = regression_data
    blr = BayesianLinearRegression(tol=0.0, max_iter=6).fit(X, y)
    precision = t(1.0) * blr.posterior_precision_matrix_  # E[τ] = a₀/b₀ = 1
    q_w = dist.MultivariateNormal(blr.coef_, precision_matrix=precision)
    auto = AutoCAVI(BayesianRegression(), init={"weights": q_w}, tol=0.0, max_iter=6).fit(X, y)
    assert relative(auto.lower_bounds_, blr.lower_bounds_) < 1e-10
    assert auto.n_iter_ == 6 and not auto.converged_


def gamma_poisson(y):
    rate = pyro.sample("rate", dist.Gamma(t(3.0), t(2.0)))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Poisson(rate), obs=y)


def beta_bernoulli(y):
    p = pyro.sample("p", dist.Beta(t(2.0), t(5.0)))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Bernoulli(p), obs=y)


def test_single_latent_models_are_exact_in_one_sweep():
    # one latent: q = its exact posterior after one update, and the bound is log p(y)
    y = t([0.0, 3.0, 1.0, 4.0, 2.0])
    a, b, n, s = 3.0, 2.0, len(y), float(y.sum())
    exact = (
        a * math.log(b) - math.lgamma(a) + math.lgamma(a + s) - (a + s) * math.log(b + n)
        - float(torch.lgamma(y + 1).sum())
    )  # fmt: skip
    fit = AutoCAVI(gamma_poisson, tol=0.0, max_iter=2).fit(y)
    assert fit.lower_bounds_ == pytest.approx([exact, exact], rel=1e-10)
    q = fit.variational_distributions()["rate"]
    assert float(q.concentration) == pytest.approx(a + s) and float(q.rate) == pytest.approx(b + n)

    y = t([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    alpha, beta, k, n = 2.0, 5.0, float(y.sum()), len(y)

    def log_beta(u, v):
        return math.lgamma(u) + math.lgamma(v) - math.lgamma(u + v)

    exact = log_beta(alpha + k, beta + n - k) - log_beta(alpha, beta)
    fit = AutoCAVI(beta_bernoulli, max_iter=1).fit(y)
    assert fit.lower_bound_ == pytest.approx(exact, rel=1e-10)


ALPHA = t([1.0, 2.0, 0.5])


def _log_multivariate_beta(a):
    return float(torch.lgamma(a).sum() - torch.lgamma(a.sum()))


def _gamma_exponential(y):
    lam = pyro.sample("lam", dist.Gamma(t(2.0), t(3.0)))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Exponential(lam), obs=y)


def _gamma_exponential_evidence(y):
    n, s = len(y), float(y.sum())
    return 2 * math.log(3) - math.lgamma(2) + math.lgamma(2 + n) - (2 + n) * math.log(3 + s)


def _beta_binomial(y):
    p = pyro.sample("p", dist.Beta(t(2.0), t(3.0)))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Binomial(t([5.0, 3.0, 8.0]), p), obs=y)


def _beta_binomial_evidence(y):
    n = t([5.0, 3.0, 8.0])
    log_choose = float((torch.lgamma(n + 1) - torch.lgamma(y + 1) - torch.lgamma(n - y + 1)).sum())
    return (
        log_choose
        + _log_multivariate_beta(t([2.0 + float(y.sum()), 3.0 + float((n - y).sum())]))
        - _log_multivariate_beta(t([2.0, 3.0]))
    )


def _dirichlet_multinomial(x):
    theta = pyro.sample("theta", dist.Dirichlet(ALPHA))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Multinomial(4, theta), obs=x)


def _dirichlet_multinomial_evidence(x):
    log_coefficients = float((torch.lgamma(x.sum(-1) + 1) - torch.lgamma(x + 1).sum(-1)).sum())
    return (
        log_coefficients + _log_multivariate_beta(ALPHA + x.sum(0)) - _log_multivariate_beta(ALPHA)
    )


def _dirichlet_categorical(c):
    theta = pyro.sample("theta", dist.Dirichlet(ALPHA))
    with pyro.plate("data", len(c)):
        pyro.sample("c", dist.Categorical(theta), obs=c)


def _dirichlet_categorical_evidence(c):
    counts = torch.bincount(c, minlength=3).to(F64)
    return _log_multivariate_beta(ALPHA + counts) - _log_multivariate_beta(ALPHA)


@pytest.mark.parametrize(
    ("model", "evidence", "data"),
    [
        (_gamma_exponential, _gamma_exponential_evidence, t([0.5, 1.2, 0.1, 2.0])),
        (_beta_binomial, _beta_binomial_evidence, t([2.0, 3.0, 1.0])),
        (_dirichlet_multinomial, _dirichlet_multinomial_evidence, t([[2, 1, 1], [0, 3, 1]])),
        (_dirichlet_categorical, _dirichlet_categorical_evidence, torch.tensor([0, 1, 1, 2, 1])),
    ],
    ids=["Gamma-Exponential", "Beta-Binomial", "Dirichlet-Multinomial", "Dirichlet-Categorical"],
)
def test_each_conjugate_pair_is_exact_with_one_latent(model, evidence, data):
    # the posterior is in q's family: one update gives it, and the bound is the closed-form
    # evidence (the compound distributions' normalizers; Bishop 2006 §2.1-2.2, Murphy 2012)
    fit = AutoCAVI(model, max_iter=2).fit(data)
    assert fit.lower_bound_ == pytest.approx(evidence(data), rel=1e-12)


def hierarchical(y, a0=2.0, b0=1.0, kappa=1.0, s0=3.0):
    """m ~ N(0, s0²); per group g: τ_g ~ Gamma(a0, b0), μ_g ~ N(m, 1/(κτ_g)),
    y_ng ~ N(μ_g, 1/τ_g). y: [N, G]."""
    m = pyro.sample("m", dist.Normal(t(0.0), t(s0)))
    with pyro.plate("groups", y.shape[-1], dim=-1):
        tau = pyro.sample("tau", dist.Gamma(t(a0), t(b0)))
        mu = pyro.sample("mu", dist.Normal(m, (kappa * tau).rsqrt()))
        with pyro.plate("points", y.shape[0], dim=-2):
            pyro.sample("y", dist.Normal(mu, tau.rsqrt()), obs=y)


def hierarchical_evidence_by_quadrature(y, a0=2.0, b0=1.0, kappa=1.0, s0=3.0):
    # one group: m integrates out analytically, μ | τ ~ N(0, s0² + 1/(κτ)); then a 2-D
    # midpoint rule over (μ, log τ) (it moves by 2e-11 nats on a grid 8x finer each way)
    mu = torch.linspace(-12, 12, 301, dtype=F64).unsqueeze(-1)
    log_tau = torch.linspace(-9, 5, 176, dtype=F64)
    tau = log_tau.exp()
    prior_mu = dist.Normal(0.0, (s0**2 + 1 / (kappa * tau)).sqrt()).log_prob(mu)
    lik = dist.Normal(mu.unsqueeze(-1), tau.rsqrt().unsqueeze(-1)).log_prob(y[:, 0]).sum(-1)
    integrand = lik + prior_mu + dist.Gamma(t(a0), t(b0)).log_prob(tau) + log_tau
    cell = float(mu[1, 0] - mu[0, 0]) * float(log_tau[1] - log_tau[0])
    return float(torch.logsumexp(integrand.flatten(), 0)) + math.log(cell)


def test_hierarchical_bound_is_below_the_evidence_by_quadrature():
    y = t([[0.3], [1.9], [1.1], [0.4]])
    fit = AutoCAVI(hierarchical, tol=1e-12).fit(y)
    evidence = hierarchical_evidence_by_quadrature(y)
    assert fit.converged_
    # the mean-field gap KL(q ‖ p(m, μ, τ | y)) is positive but a fraction of a nat here
    assert evidence - 0.5 < fit.lower_bound_ < evidence
    steps = torch.tensor(fit.lower_bounds_).diff()
    assert bool((steps > -1e-9).all())  # coordinate ascent never lowers the bound


def hierarchical_log_joint(y, m, tau, mu):
    """log p(y, m, τ, μ) for draws with a leading sample dim (m: [S], τ, μ: [S, G])."""
    return (
        dist.Normal(0.0, 3.0).log_prob(m)
        + dist.Gamma(t(2.0), t(1.0)).log_prob(tau).sum(-1)
        + dist.Normal(m.unsqueeze(-1), tau.rsqrt()).log_prob(mu).sum(-1)
        + dist.Normal(mu.unsqueeze(-2), tau.rsqrt().unsqueeze(-2)).log_prob(y).sum((-1, -2))
    )


def test_hierarchical_bound_equals_a_monte_carlo_elbo_of_its_factors():
    # the bound is E_q[log p − log q] with every constant: check it by sampling q
    y = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=F64) + t([0, 1, 3])
    fit = AutoCAVI(hierarchical, tol=1e-10).fit(y)
    q = fit.variational_distributions()
    assert q["mu"].batch_shape == q["tau"].batch_shape == (3,)
    torch.manual_seed(0)
    draws = {k: v.sample((20000,)) for k, v in q.items()}
    log_q = sum(v.log_prob(draws[k]).reshape(20000, -1).sum(-1) for k, v in q.items())
    terms = hierarchical_log_joint(y, draws["m"], draws["tau"], draws["mu"]) - log_q
    stderr = float(terms.std()) / math.sqrt(len(terms))
    assert abs(float(terms.mean()) - fit.lower_bound_) < 4 * stderr


def test_non_conjugate_site_is_refused_naming_site_distribution_and_factor():
    def log_scale(y):
        u = pyro.sample("u", dist.Normal(t(0.0), t(1.0)))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(t(0.0), u.exp()), obs=y)

    with pytest.raises(NotConjugateError, match=r"'u' \(Normal\).*factor 'y' \(Normal\)"):
        AutoCAVI(log_scale).fit(t([0.5, -1.0]))


def test_unsupported_family_and_cross_plate_factor_are_refused():
    def log_normal(y):
        s = pyro.sample("s", dist.LogNormal(t(0.0), t(1.0)))
        pyro.sample("y", dist.Normal(t(0.0), s), obs=y)

    with pytest.raises(NotConjugateError, match="latent site 's': LogNormal"):
        AutoCAVI(log_normal).fit(t(0.5))

    def switches(y):  # a plated Bernoulli read whole has no closed-form vector q
        with pyro.plate("k", 3):
            s = pyro.sample("s", dist.Bernoulli(t(0.5)))
        pyro.sample("y", dist.Normal(s.sum(), t(1.0)), obs=y)

    with pytest.raises(NotConjugateError, match=r"factor 'y'.*latent site 's'"):
        AutoCAVI(switches).fit(t(0.5))

    def masked(y):  # a mask over the plate's elements: as a vector it would be summed away
        with pyro.plate("k", 3), poutine.mask(mask=t([True, False, True]).bool()):
            mu = pyro.sample("mu", dist.Normal(t(0.0), t(1.0)))
        pyro.sample("y", dist.Normal(mu.sum(), t(1.0)), obs=y)

    refusal = r"factor 'y' depends on latent site 'mu'.*\['k'\].*not 'mu': a handler masks it"
    with pytest.raises(NotConjugateError, match=refusal):
        AutoCAVI(masked).fit(t(0.5))


@pytest.mark.filterwarnings("ignore:AutoCAVI. stopped at max_iter=1")  # one sweep, on purpose
def test_a_start_for_a_site_taken_as_a_vector_is_given_as_declared_or_as_the_vector():
    """Tester AT's F1: ``init`` for a plated w that AutoCAVI takes as one vector was refused
    both ways (a Normal per element: "event shape () is not the site's (3,)"; the vector's
    MultivariateNormal: "(3,) is not the site's ()"), the start being checked on the site
    before its conversion and after. Both are taken now, and start where they say: the
    fit's first bound is the same from either, and from the same start declared by hand as
    a vector site; a start of the wrong size is refused naming init['w']."""
    g = torch.Generator().manual_seed(26)
    X = torch.randn(20, 3, generator=g, dtype=F64)
    y = X @ t([1.0, -1.0, 0.5]) + 0.5 * torch.randn(20, generator=g, dtype=F64)

    plated = plated_regression

    def vector(X, y):
        tau = pyro.sample("tau", dist.Gamma(t(2.0), t(1.0)))
        w = pyro.sample("w", dist.Normal(t(0.0), t(1.0)).expand([3]).to_event(1))
        with pyro.plate("data", 20):
            pyro.sample("y", dist.Normal(X @ w, tau.rsqrt()), obs=y)

    mean = t([3.0, 2.0, 1.0])
    starts = [
        {"w": dist.Normal(mean, t(0.5))},
        {"w": dist.MultivariateNormal(mean, 0.25 * torch.eye(3, dtype=F64))},
    ]
    first = [AutoCAVI(plated, init=s, max_iter=1).fit(X, y).lower_bound_ for s in starts]
    hand = AutoCAVI(vector, init=starts[1], max_iter=1).fit(X, y).lower_bound_
    assert first[0] == pytest.approx(hand, rel=1e-12) and first[1] == pytest.approx(hand, rel=1e-12)
    unstarted = AutoCAVI(plated, max_iter=1).fit(X, y).lower_bound_
    assert abs(unstarted - hand) > 1e-3  # the start moved the first sweep
    with pytest.raises(ValueError, match=r"init\['w'\]: its batch shape \(2,\).*one per elem"):
        AutoCAVI(plated, init={"w": dist.Normal(t([1.0, 2.0]), t(1.0))}).fit(X, y)
    # another family is named as given (tester AU: "Independent is not ... Normal family")
    with pytest.raises(ValueError, match=r"init\['w'\]: Gamma is not a distribution of the"):
        AutoCAVI(plated, init={"w": dist.Gamma(t([1.0, 2.0, 3.0]), t(1.0))}).fit(X, y)


def test_an_explicit_block_whose_mean_is_taken_as_a_vector_is_fitted_as_the_auto_block():
    """Tester AT's F2: blocks=[("w", "tau")] with w in a features plate beside its precision
    τ was refused ("different batch shapes (2,) and ()"), the block checked on the sites as
    declared, though blocks="auto" takes w as one vector and pairs the two, exactly: the
    Normal-Gamma regression's log evidence, a multivariate Student-t (Bishop 2006, eq.
    3.118 with the noise and prior sharing τ). Now the block is paired after the
    conversion, with the auto block's bound. A block of two sites that followed a vector
    (each a vector of one element), refused naming them after a crash in torch, is the
    block it is when the model is declared with vectors by hand."""
    g = torch.Generator().manual_seed(28)
    X, y = torch.randn(20, 2, generator=g, dtype=F64), torch.randn(20, generator=g, dtype=F64)

    def shared(X, y):
        tau = pyro.sample("tau", dist.Gamma(t(2.0), t(1.0)))
        with pyro.plate("features", 2):
            w = pyro.sample("w", dist.Normal(t(0.0), tau.rsqrt()))
        with pyro.plate("data", 20):
            pyro.sample("y", dist.Normal(X @ w, tau.rsqrt()), obs=y)

    # y ~ Student-t(2a, 0, (b/a)(I + XXᵀ)) with a = 2, b = 1
    scale = 0.5 * (torch.eye(20, dtype=F64) + X @ X.T)
    student = dist.MultivariateStudentT(t(4.0), torch.zeros(20, dtype=F64),
                                        torch.linalg.cholesky(scale))  # fmt: skip
    evidence = float(student.log_prob(y))
    explicit = AutoCAVI(shared, blocks=[("w", "tau")], tol=1e-12).fit(X, y)
    auto = AutoCAVI(shared, blocks="auto", tol=1e-12).fit(X, y)
    assert explicit.blocks_ == auto.blocks_ == [("w", "tau")]
    assert abs(explicit.lower_bound_ - evidence) < 1e-10 * abs(evidence)
    assert abs(auto.lower_bound_ - evidence) < 1e-10 * abs(evidence)
    # the block given the wrong way round names w as declared, then taken (tester AU)
    with pytest.raises(NotConjugateError, match=r"are \(Gamma, Normal \(\.to_event\(1\)\)\)"):
        AutoCAVI(shared, blocks=[("tau", "w")]).fit(X, y)

    G, group = 3, torch.arange(20) % 3

    def followers(X, group, y):
        with pyro.plate("groups", G, dim=-2):
            tau = pyro.sample("tau", dist.Gamma(t(2.0), t(2.0)))
            mu = pyro.sample("mu", dist.Normal(t(0.0), tau.rsqrt()))
            with pyro.plate("features", 2, dim=-1):
                b = pyro.sample("b", dist.Normal(mu, tau.rsqrt()))
        with pyro.plate("data", 20):
            pyro.sample("y", dist.Normal((X * b[..., group, :]).sum(-1), t(0.5)), obs=y)

    def by_hand(X, group, y):  # the same model declared as vectors over the groups
        with pyro.plate("groups", G, dim=-1):
            tau = pyro.sample("tau", dist.Gamma(t(2.0), t(2.0)))
            mu = pyro.sample("mu", dist.Normal(t(0.0), tau.rsqrt()))
            scale = tau.rsqrt().unsqueeze(-1).expand(tau.shape + (2,))
            b = pyro.sample("b", dist.Normal(mu.unsqueeze(-1), scale).to_event(1))
        with pyro.plate("data", 20):
            pyro.sample("y", dist.Normal((X * b[..., group, :]).sum(-1), t(0.5)), obs=y)

    # two followers of b (each a vector of one element) pair as the scalar block they are
    # (refused until the block took a one-element Gamma vector as τ)
    followed = AutoCAVI(followers, blocks=[("mu", "tau")], tol=1e-12).fit(X, group, y)
    hand = AutoCAVI(by_hand, blocks=[("mu", "tau")], tol=1e-12).fit(X, group, y)
    assert followed.plates_as_events_ == {"b": "features", "mu": None, "tau": None}
    assert abs(followed.lower_bound_ - hand.lower_bound_) < 1e-10 * abs(hand.lower_bound_)


def test_random_slopes_sharing_a_group_precision_with_their_noise_are_one_block_a_group():
    """Random slopes b in groups x features whose prior and noise share the group's τ_g of
    shape (G, 1): taken as one vector per group, b left τ_g a Gamma vector of one element,
    which no block paired, so blocks="auto" fitted mean field, below the evidence (0.27
    nats in tester AT's case). Paired now, as the same model declared with vectors is, the
    bound is the exact evidence, a multivariate Student-t per group, and q(τ_g) the exact
    posterior Gamma(a + n_g/2, b + ½ y_gᵀ(I + X_g X_gᵀ)⁻¹ y_g) (Bishop 2006, §3.3)."""
    g = torch.Generator().manual_seed(5)
    G, N = 4, 30
    X, group = torch.randn(N, 2, generator=g, dtype=F64), torch.arange(N) % G
    y = torch.randn(N, generator=g, dtype=F64)
    evidence = group_slopes_evidence(X, group, y, G)
    auto = AutoCAVI(group_slopes, blocks="auto", tol=1e-12).fit(X, group, y, G)
    explicit = AutoCAVI(group_slopes, blocks=[("b", "tau")], tol=1e-12).fit(X, group, y, G)
    assert auto.blocks_ == explicit.blocks_ == [("b", "tau")]
    assert auto.plates_as_events_ == {"b": "features", "tau": None}
    for fit in (auto, explicit):
        assert abs(fit.lower_bound_ - evidence) < 1e-10 * abs(evidence)
    mean_field = AutoCAVI(group_slopes, tol=1e-12).fit(X, group, y, G).lower_bound_
    assert mean_field < evidence - 0.1  # what the block gains here
    q_tau = auto.variational_distributions()["tau"]
    assert q_tau.batch_shape == (G,) and q_tau.event_shape == (1,)
    for k in range(G):
        Xk, yk = X[group == k], y[group == k]
        quad = float(yk @ torch.linalg.solve(torch.eye(len(yk), dtype=F64) + Xk @ Xk.T, yk))
        assert float(q_tau.base_dist.concentration[k, 0]) == pytest.approx(2 + len(yk) / 2,
                                                                           rel=1e-10)  # fmt: skip
        assert float(q_tau.base_dist.rate[k, 0]) == pytest.approx(1 + quad / 2, rel=1e-8)


def test_a_refused_refit_leaves_the_last_fit_whole():
    """Tester AP's F3: a refit refused after a plated w was fitted as a vector kept the
    first fit's q and bound but cleared plates_as_events_, so the guide drew w's joint q
    inside the plate ([3, 3]) and Pyro refused it. The refused fit now leaves the
    estimator as the last fit left it: its guide scores that fit's bound."""
    X = torch.randn(10, 3, generator=torch.Generator().manual_seed(6), dtype=F64)
    y = torch.randn(10, generator=torch.Generator().manual_seed(7), dtype=F64)

    def regression(X, y, prior=dist.Normal):
        with pyro.plate("f", 3):
            w = pyro.sample("w", prior(t(0.5), t(0.5)))
        with pyro.plate("data", 10):
            pyro.sample("y", dist.Normal((X * w.unsqueeze(-2)).sum(-1), t(0.5)), obs=y)

    fit = AutoCAVI(regression).fit(X, y)
    bound, q = fit.lower_bound_, fit.variational_distributions()["w"]
    with pytest.raises(NotConjugateError, match=r"not 'w': its prior \(Beta\) is not"):
        fit.fit(X, y, prior=dist.Beta)
    assert fit.lower_bound_ == bound and fit.plates_as_events_ == {"w": "f"}
    kept = fit.variational_distributions()["w"]  # a copy of the same q
    assert torch.equal(kept.loc, q.loc) and torch.equal(kept.scale_tril, q.scale_tril)
    trace = pyro.poutine.trace(fit.variational_guide()).get_trace(X, y)
    assert trace.nodes["w"]["value"].shape == (3,)


def test_plated_normal_read_whole_is_fitted_as_one_vector_to_the_exact_evidence():
    """μ_k ~ N(0, 1) in a plate of 3, y ~ N(Σ μ_k, 1): y's one element reads every μ_k.
    Fitted as one vector over the plate (plate_events), q(μ) is a full-covariance Gaussian,
    the exact posterior, so the bound is log p(y) = log N(y | 0, 4) (it was refused)."""

    def summed(y):
        with pyro.plate("k", 3):
            mu = pyro.sample("mu", dist.Normal(t(0.0), t(1.0)))
        pyro.sample("y", dist.Normal(mu.sum(), t(1.0)), obs=y)

    fit = AutoCAVI(summed, tol=1e-13).fit(t(0.5))
    exact = float(dist.Normal(t(0.0), t(2.0)).log_prob(t(0.5)))
    assert fit.plates_as_events_ == {"mu": "k"}
    assert abs(fit.lower_bound_ - exact) < 1e-10 * abs(exact)
    q = fit.variational_distributions()["mu"]
    assert isinstance(q, dist.MultivariateNormal) and q.event_shape == (3,)
    # the exact posterior: Cov = I − 11ᵀ/4, mean = 0.5/4 each
    expected = torch.eye(3, dtype=F64) - torch.ones(3, 3, dtype=F64) / 4
    assert torch.allclose(q.covariance_matrix, expected, atol=1e-10)
    assert torch.allclose(q.mean, torch.full((3,), 0.125, dtype=F64), atol=1e-10)


def test_a_refusal_after_a_plate_was_taken_as_a_vector_says_so():
    """A logistic likelihood reading a plated w whole: w is taken as one vector over the
    plate, then refused for the link; the message names w's family as that vector's
    (Normal (.to_event(1))), so it says the vector was AutoCAVI's, not the user's."""

    def logistic(X, y):
        with pyro.plate("features", 2):
            w = pyro.sample("w", dist.Normal(t(0.0), t(1.0)))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Bernoulli(logits=X @ w), obs=y)

    X = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    y = (X[:, 0] > 0).to(F64)
    with pytest.raises(NotConjugateError, match=r"'w'.*Bernoulli.*'w' over plate 'features'"):
        AutoCAVI(logistic).fit(X, y)


def test_a_factor_whose_event_spans_the_plate_is_told_to_use_the_plate():
    """PPCA written with x_n an event over its D features (``.to_event(1)``) and W's rows
    in a features plate: each x_n reads every row of W (refused: W's rows are vectors
    already, which AutoCAVI does not take into a matrix). The refusal says that x's event
    spans the features plate and to declare x inside it; so declared, the model fits."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(12, 3, generator=g, dtype=F64)

    def events(X, as_plate=False):
        tau = pyro.sample("tau", dist.Gamma(t(2.0), t(1.0)))
        features = pyro.plate("features", 3, dim=-1)
        with features:
            W = pyro.sample("W", dist.Normal(t(0.0), t(1.0)).expand([2]).to_event(1))
        with pyro.plate("data", 12, dim=-2):
            z = pyro.sample("z", dist.Normal(t(0.0), t(1.0)).expand([2]).to_event(1))
            if as_plate:
                with features:
                    pyro.sample("x", dist.Normal((z * W).sum(-1), tau.rsqrt()), obs=X)
            else:
                mean = (z * W).sum(-1)
                pyro.sample("x", dist.Normal(mean, tau.rsqrt()).to_event(1), obs=X)

    refusal = (r"'x' has event shape \(3,\), which spans plate 'features' of 3 elements: "
               r"declare 'x' inside pyro.plate\('features', 3")  # fmt: skip
    with pytest.raises(NotConjugateError, match=refusal):
        AutoCAVI(events).fit(X)
    fit = AutoCAVI(events, tol=1e-10, max_iter=2000).fit(X, as_plate=True)
    assert fit.converged_ and math.isfinite(fit.lower_bound_)


def test_a_float32_model_on_float64_arguments_is_refused_with_the_way_out():
    """Pyro's regression tutorial as written (nn.Linear, PyroSample priors built from float32
    tensors) failed inside nn.Linear with torch's dtype error once fit cast the data to
    float64; model.double() converts the module's parameters, not the priors' tensors."""
    from pyro.nn import PyroModule, PyroSample
    from torch import nn

    class Regression(PyroModule):
        def __init__(self):
            super().__init__()
            self.linear = PyroModule[nn.Linear](3, 1)
            self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, 3]).to_event(2))
            self.linear.bias = PyroSample(dist.Normal(0.0, 10.0).expand([1]).to_event(1))

        def forward(self, x, y):
            mean = self.linear(x).squeeze(-1)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("obs", dist.Normal(mean, 0.5), obs=y)

    x, y = torch.randn(10, 3, generator=torch.Generator().manual_seed(0)), torch.zeros(10)
    with pytest.raises(ValueError, match=r"model: it fails on the float64 .*PyroSample prior"):
        AutoCAVI(Regression()).fit(x, y)


def test_priors_built_from_boolean_data_are_refused_with_the_way_out():
    """Tester 38's P2: ``x.new_tensor(2.0)`` from boolean data is a boolean tensor, and the
    Beta prior built from it failed in torch ("dirichlet" not implemented for 'Bool') with
    Pyro's empty trace table; integer data got AutoCAVI's own message already."""
    y = t([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]).bool()

    def built_from_the_data(y):
        p = pyro.sample("p", dist.Beta(y.new_tensor(2.0), y.new_tensor(5.0)))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Bernoulli(p), obs=y)

    with pytest.raises(ValueError, match=r"'Bool'.*x\.new_tensor\(2\.0\) from such data"):
        AutoCAVI(built_from_the_data).fit(y)
    fit = AutoCAVI(beta_bernoulli).fit(y)  # the prior in float64, the data boolean: fitted
    assert fit.lower_bound_ == pytest.approx(
        AutoCAVI(beta_bernoulli).fit(y.double()).lower_bound_, rel=1e-12
    )


def test_numpy_arrays_are_taken_as_tensors():
    """Tester 38: ``fit(y.numpy())`` failed in the model (an ndarray has no ``new_tensor``);
    scikit-learn's estimators, and the hand-written classes, take arrays. A float32 array
    is cast to float64 as a tensor is; integer counts keep their dtype."""
    y = t([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    expected = AutoCAVI(beta_bernoulli).fit(y).lower_bound_
    assert AutoCAVI(beta_bernoulli).fit(y.float().numpy()).lower_bound_ == expected
    counts = t([3.0, 0.0, 5.0, 2.0])

    def new_tensor_of_the_data(y):
        rate = pyro.sample("rate", dist.Gamma(y.new_tensor(2.0), y.new_tensor(1.0)))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Poisson(rate), obs=y)

    exact = AutoCAVI(new_tensor_of_the_data).fit(counts).lower_bound_
    fit = AutoCAVI(gamma_poisson).fit(counts.long().numpy())  # counts: a float64 prior
    assert fit.lower_bound_ == pytest.approx(AutoCAVI(gamma_poisson).fit(counts).lower_bound_)
    assert AutoCAVI(new_tensor_of_the_data).fit(counts.numpy()).lower_bound_ == exact


def test_a_namedtuple_or_an_ordered_dict_argument_keeps_its_type():
    # tester Z's F5: a namedtuple reached the model as a plain tuple ("'tuple' object has
    # no attribute 'y'"); an OrderedDict or a defaultdict became a dict
    import collections

    Data = collections.namedtuple("Data", ["y"])
    counts = t([3.0, 0.0, 5.0, 2.0])
    exact = AutoCAVI(gamma_poisson).fit(counts).lower_bound_

    def from_named(data):
        assert type(data) is Data
        gamma_poisson(data.y)

    def from_ordered(data):
        assert type(data) is collections.OrderedDict
        gamma_poisson(data["y"])

    assert AutoCAVI(from_named).fit(Data(counts.float())).lower_bound_ == exact
    ordered = collections.OrderedDict(y=counts.float())
    assert AutoCAVI(from_ordered).fit(ordered).lower_bound_ == exact
    assert ordered["y"].dtype == torch.float32  # the caller's argument is left as it was


def test_an_empty_argument_the_model_fails_on_is_named():
    # tester 38: Pyro's plate raised "ZeroDivisionError: size cannot be zero", naming nothing
    with pytest.raises(ValueError, match=r"fit: argument 0 is empty \(shape \(0,\)\).*"
                       r"ZeroDivisionError"):  # fmt: skip
        AutoCAVI(beta_bernoulli).fit(torch.zeros(0, dtype=F64))
    with pytest.raises(ValueError, match=r"fit: argument 'y' is empty"):
        AutoCAVI(beta_bernoulli).fit(y=torch.zeros(0, dtype=F64))


def test_random_state_none_draws_a_seed_that_fits_again_alike():
    """None was refused, where the hand-written classes (and scikit-learn) take it: it
    draws a seed from the OS's entropy, kept in ``seed_``, and that seed given back as
    ``random_state`` repeats the fit sweep for sweep (whatever seed was drawn)."""

    def gamma_block(y):
        tau = pyro.sample("tau", dist.Gamma(t(1.0), t(1.0)))
        mu = pyro.sample("mu", dist.Normal(t(0.0), tau.rsqrt()))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, tau.rsqrt()), obs=y)

    y = t([0.5, -1.0, 2.0, 1.5])
    drawn = AutoCAVI(gamma_block, random_state=None).fit(y)
    assert isinstance(drawn.seed_, int) and 0 <= drawn.seed_ < 2**31
    again = AutoCAVI(gamma_block, random_state=drawn.seed_).fit(y)
    assert again.lower_bounds_ == drawn.lower_bounds_ and again.seed_ == drawn.seed_


def test_data_whose_squares_overflow_are_refused_naming_the_argument():
    """Tester BQ: data near 1e160 were refused as "log-density −inf at some probe points"
    or "not positive definite", where the other CAVI classes name the argument; data of
    1e150, whose squares still sum finitely, are taken (a masked entry's NaN is left)."""

    from pyro_vae.cavi._checks import squares_finite

    def normal_mean(y):
        mu = pyro.sample("mu", dist.Normal(t(0.0), t(1e200)))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, t(1.0)), obs=y)

    y = t([0.5, -1.0, 2.0])
    # the sum itself, not the largest square times the count (tester BR: 999 zeros and one
    # 1e153, summing to 1e306, were refused)
    big = torch.zeros(1000, dtype=torch.float64)
    big[0] = 1e153
    assert squares_finite("y", big) is big
    with pytest.raises(ValueError, match=r"fit: argument 0: values up to 2e\+160, whose"):
        AutoCAVI(normal_mean).fit(y * 1e160)
    with pytest.raises(ValueError, match=r"fit: argument 'y'\[1\]: values up to 1e\+160"):
        AutoCAVI(lambda y: normal_mean(y[0])).fit(y=(y, t([1e160])))
    # a Python float argument too (it went unchecked)
    with pytest.raises(ValueError, match=r"fit: argument 1: values up to 1e\+160, whose"):
        AutoCAVI(lambda y, shift: normal_mean(y + shift)).fit(y, 1e160)


def test_bad_settings_are_refused_naming_the_argument():
    y = t([1.0, 2.0])
    with pytest.raises(ValueError, match="tol: -1"):
        AutoCAVI(gamma_poisson, tol=-1).fit(y)
    with pytest.raises(ValueError, match="model: 'gamma_poisson' is not callable"):
        AutoCAVI("gamma_poisson").fit(y)  # tester 38: 'str' object is not callable
    with pytest.raises(ValueError, match="max_iter: 0"):
        AutoCAVI(gamma_poisson, max_iter=0).fit(y)
    with pytest.raises(ValueError, match=r"init: \['lam'\] is not a latent site.*\['rate'\]"):
        AutoCAVI(gamma_poisson, init={"lam": dist.Gamma(t(1.0), t(1.0))}).fit(y)
    with pytest.raises(ValueError, match=r"init\['rate'\]: Tensor is not a distribution"):
        AutoCAVI(gamma_poisson, init={"rate": t(1.0)}).fit(y)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        AutoCAVI(gamma_poisson).variational_distributions()
    with pytest.raises(ValueError, match=r"blocks: \('rate',\) is not a \(mean site, precision"):
        AutoCAVI(gamma_poisson, blocks=[("rate",)]).fit(y)
    with pytest.raises(ValueError, match="blocks: None is neither 'auto' nor a list"):
        AutoCAVI(gamma_poisson, blocks=None).fit(y)
    with pytest.raises(ValueError, match="markov_chains: 'False' is not True or False"):
        AutoCAVI(gamma_poisson, markov_chains="False").fit(y)
    for seed in ("a", -1, True):
        message = rf"random_state: {seed!r} is not a seed; expected None, an integer ≥ 0, or a"
        with pytest.raises(ValueError, match=message):
            AutoCAVI(gamma_poisson, random_state=seed).fit(y)
    # a NumPy integer is a seed (it crashed in torch's manual_seed: tester AM's F7), the
    # same seed as the int
    by_numpy = AutoCAVI(gamma_poisson, random_state=np.int64(3)).fit(y)
    assert by_numpy.lower_bound_ == AutoCAVI(gamma_poisson, random_state=3).fit(y).lower_bound_
    assert by_numpy.seed_ == 3

    def gamma_block(y):
        tau = pyro.sample("tau", dist.Gamma(t(1.0), t(1.0)))
        mu = pyro.sample("mu", dist.Normal(t(0.0), tau.rsqrt()))
        pyro.sample("y", dist.Normal(mu, tau.rsqrt()), obs=y)

    def shared_precision(y):
        tau = pyro.sample("tau", dist.Gamma(t(1.0), t(1.0)))
        mu = pyro.sample("mu", dist.Normal(t(0.0), tau.rsqrt()))
        nu = pyro.sample("nu", dist.Normal(t(0.0), tau.rsqrt()))
        pyro.sample("y", dist.Normal(mu + nu, tau.rsqrt()), obs=y)

    with pytest.raises(ValueError, match="blocks: 'tau' is in \\('mu', 'tau'\\) and \\('nu', "):
        AutoCAVI(shared_precision, blocks=[("mu", "tau"), ("nu", "tau")]).fit(t(0.3))
    with pytest.raises(ValueError, match=r"blocks: \('mu', 'tau'\) is given twice"):
        AutoCAVI(gamma_block, blocks=[("mu", "tau"), ("mu", "tau")]).fit(t(0.3))
    with pytest.raises(ValueError, match=r"blocks: \('mu', 'y'\): 'y' is not a latent site"):
        AutoCAVI(gamma_block, blocks=[("mu", "y")]).fit(t(0.3))

    def plated_means(y):
        tau = pyro.sample("tau", dist.Gamma(t(1.0), t(1.0)))
        with pyro.plate("groups", 2):
            mu = pyro.sample("mu", dist.Normal(t(0.0), tau.rsqrt()))
        pyro.sample("y", dist.Normal(mu.sum(), tau.rsqrt()), obs=y)

    # the block's mean in a plate its precision is not: refused as declared, it is now
    # taken as one vector (read whole by y) and paired, exactly: y ~ Student-t(2, 0, √3)
    fit = AutoCAVI(plated_means, blocks=[("mu", "tau")], tol=1e-12).fit(t(0.3))
    exact = float(dist.StudentT(t(2.0), t(0.0), t(3.0).sqrt()).log_prob(t(0.3)))
    assert fit.blocks_ == [("mu", "tau")] and fit.plates_as_events_ == {"mu": "groups"}
    assert abs(fit.lower_bound_ - exact) < 1e-10 * abs(exact)

    def plated_apart(y):  # read elementwise, no vector: the refusal stands
        tau = pyro.sample("tau", dist.Gamma(t(1.0), t(1.0)))
        with pyro.plate("groups", 2):
            mu = pyro.sample("mu", dist.Normal(t(0.0), tau.rsqrt()))
            pyro.sample("y", dist.Normal(mu, tau.rsqrt()), obs=y.expand(2))

    with pytest.raises(
        ValueError, match=r"different batch shapes \(plates\) \(2,\) and \(\).*to_event"
    ):
        AutoCAVI(plated_apart, blocks=[("mu", "tau")]).fit(t(0.3))
    # a block is (mean, precision): the other order names both and what is expected
    with pytest.raises(NotConjugateError, match=r"blocks: \('tau', 'mu'\) are \(Gamma, Normal\)"):
        AutoCAVI(gamma_block, blocks=[("tau", "mu")]).fit(t(0.3))


def normal_gamma(y, a0=2.0, b0=1.0, kappa=1.5, m0=0.3):
    """τ ~ Gamma(a₀, b₀), μ | τ ~ N(m₀, 1/(κτ)), y_n ~ N(μ, 1/τ): the posterior is
    Normal-Gamma."""
    tau = pyro.sample("tau", dist.Gamma(t(a0), t(b0)))
    mu = pyro.sample("mu", dist.Normal(t(m0), (kappa * tau).rsqrt()))
    with pyro.plate("points", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, tau.rsqrt()), obs=y)


def normal_gamma_evidence(y, a0=2.0, b0=1.0, kappa=1.5, m0=0.3):
    """log p(y) in closed form (Murphy 2007, "Conjugate Bayesian analysis of the Gaussian
    distribution", eq. 95)."""
    n, ybar = len(y), float(y.mean())
    kappa_n, a_n = kappa + n, a0 + n / 2
    b_n = b0 + 0.5 * float(((y - ybar) ** 2).sum()) + kappa * n * (ybar - m0) ** 2 / (2 * kappa_n)
    return (
        math.lgamma(a_n) - math.lgamma(a0) + a0 * math.log(b0) - a_n * math.log(b_n)
        + 0.5 * math.log(kappa / kappa_n) - n / 2 * math.log(2 * math.pi)
    )  # fmt: skip


def test_a_normal_gamma_block_reaches_the_exact_evidence():
    # q(μ, τ) holds the exact posterior: the bound is log p(y), where mean field falls short
    y = t([0.3, 1.9, 1.1, 0.4])
    block = AutoCAVI(normal_gamma, blocks=[("mu", "tau")], tol=1e-12).fit(y)
    assert block.lower_bound_ == pytest.approx(normal_gamma_evidence(y), rel=1e-12)
    assert block.n_iter_ == 2 and block.converged_  # exact in one sweep, confirmed by a second
    mean_field = AutoCAVI(normal_gamma, tol=1e-12).fit(y)
    assert mean_field.lower_bound_ < block.lower_bound_ - 0.01
    q = block.variational_distributions()
    assert set(q) == {"mu", "tau"} and type(q["mu"]).__name__ == "StudentT"
    kappa_n = 1.5 + 4
    assert float(q["mu"].loc) == pytest.approx((1.5 * 0.3 + float(y.sum())) / kappa_n)


def test_a_normal_gamma_block_on_regression_is_the_exact_posterior(regression_data):
    # models/regression.py as it is, w a D-vector sharing the precision τ: the block's q is
    # BayesianLinearRegression's exact posterior and its bound the exact log evidence
    X, y = regression_data
    exact = BayesianLinearRegression().fit(X, y)
    fit = AutoCAVI(BayesianRegression(), blocks=[("weights", "precision")], tol=1e-12)
    fit.fit(X, y)
    assert fit.lower_bound_ == pytest.approx(exact.log_evidence_, rel=1e-12)
    q = fit.fitted_blocks_["weights+precision"]
    assert torch.allclose(q.loc, exact.posterior_mean_, rtol=1e-10)
    assert torch.allclose(q.precision, exact.posterior_precision_matrix_, rtol=1e-10)
    assert float(q.concentration) == pytest.approx(exact.posterior_shape_, rel=1e-12)
    assert float(q.rate) == pytest.approx(exact.posterior_rate_, rel=1e-12)


def test_normal_gamma_blocks_in_a_hierarchy_sit_between_mean_field_and_the_evidence():
    y = t([[0.3], [1.9], [1.1], [0.4]])
    block = AutoCAVI(hierarchical, blocks=[("mu", "tau")], tol=1e-12).fit(y)
    mean_field = AutoCAVI(hierarchical, tol=1e-12).fit(y)
    evidence = hierarchical_evidence_by_quadrature(y)
    assert block.converged_ and mean_field.lower_bound_ < block.lower_bound_ < evidence
    steps = torch.tensor(block.lower_bounds_).diff()
    assert bool((steps > -1e-9).all())


@pytest.mark.slow  # 800 SVI steps (5 s idle, 20 s loaded); its bound must be below CAVI's
def test_hierarchical_bound_is_above_a_long_mean_field_svi_run():
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoNormal

    y = torch.randn(6, 3, generator=torch.Generator().manual_seed(2), dtype=F64) + t([0, 1, 3])
    fit = AutoCAVI(hierarchical, tol=1e-10).fit(y)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(hierarchical)
    optim = pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.1 ** (1 / 800)})
    svi = SVI(hierarchical, guide, optim, Trace_ELBO())
    for _ in range(800):
        svi.step(y)
    estimate = Trace_ELBO(num_particles=5000, vectorize_particles=True, max_plate_nesting=2)
    losses = torch.tensor([estimate.loss(hierarchical, guide, y) for _ in range(2)])
    svi_bound = -float(losses.mean())
    # AutoNormal (Normal m, μ; log-Normal τ) is one mean-field family; CAVI's fixed point is
    # the best over all factorized q, so its bound is higher, up to the estimate's noise
    assert svi_bound < fit.lower_bound_ + 4 * float(losses.std())
    assert svi_bound > fit.lower_bound_ - 1.0  # SVI did converge near it: the test can fail


def test_float32_models_are_refused_naming_the_site():
    three, two = torch.tensor([3.0, 2.0], dtype=torch.float32)  # made before the fit

    def float32(y):
        rate = pyro.sample("rate", dist.Gamma(three, two))
        pyro.sample("y", dist.Poisson(rate), obs=y)

    with pytest.raises(ValueError, match=r"site 'rate' scores in torch.float32.*double\(\)"):
        AutoCAVI(float32).fit(t(1.0))
    assert torch.get_default_dtype() == torch.float32  # put back after the refusal


def test_a_model_written_with_python_floats_fits_under_the_float32_default():
    """Tester EV: ``dist.Gamma(2., 1.)`` under torch's float32 default was refused as
    scoring in float32, the first model most Pyro users write; the constants a model makes
    as it runs are float64 during the fit. Gamma(2, 1)-Poisson on counts 1, 3, 2, 4, 0:
    q(λ) = Gamma(2 + 10, 1 + 5), exact, so the bound is the negative binomial log evidence
    (scipy), to float64 rounding."""
    from scipy.special import gammaln

    def gamma_poisson(k):
        rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
        with pyro.plate("data", len(k)):
            pyro.sample("k", dist.Poisson(rate), obs=k)

    k = torch.tensor([1, 3, 2, 4, 0])
    assert torch.get_default_dtype() == torch.float32
    fit = AutoCAVI(gamma_poisson).fit(k)
    assert torch.get_default_dtype() == torch.float32
    q = fit.variational_distributions()["rate"]
    assert (q.concentration.item(), q.rate.item()) == pytest.approx((12.0, 6.0), rel=1e-12)
    counts = k.numpy().astype(np.float64)
    evidence = 2 * np.log(1.0) - gammaln(2.0) + gammaln(12.0) - 12 * np.log(6.0)
    evidence -= gammaln(counts + 1).sum()  # a₀ log b₀ − log Γ(a₀) + log Γ(a_N) − a_N log b_N
    assert fit.lower_bound_ == pytest.approx(float(evidence), rel=1e-12)


def test_a_float32_pyro_sample_prior_in_a_doubled_module_is_told_what_double_misses():
    """``model.double()`` converts parameters, not the tensors a ``PyroSample`` prior was
    built from; the refusal said only "call model.double()", which the user had (tester
    DR's F2)."""
    from pyro.nn import PyroModule, PyroSample

    class Mean(PyroModule):
        def __init__(self):
            super().__init__()
            self.mu = PyroSample(dist.Normal(torch.tensor(0.0), torch.tensor(2.0)))

        def forward(self, y):
            mu = self.mu
            with pyro.plate("data", len(y)):
                pyro.sample("y", dist.Normal(mu, 0.7), obs=y)

    match = r"site 'mu' scores in torch.float32.*not the tensors a PyroSample prior was built"
    with pytest.raises(ValueError, match=match):
        AutoCAVI(Mean().double()).fit(t([0.3, -1.2]))


def test_float32_parameters_the_data_promote_are_refused_naming_the_parameter():
    # 2.0 * s with an integer s is float32, and Normal makes its 0.7 float32 too; float64
    # data promote the log-density, so it scored in float64 from float32 parameters, and a
    # chain's bound came out 1.3e-7 nats off its enumerated log p(y)
    two = torch.tensor(2.0, dtype=torch.float32)  # made before the fit

    def model(y):
        s = pyro.sample("s", dist.Categorical(t([0.5, 0.5])))
        pyro.sample("y", dist.Normal(two * s, 0.7), obs=y)

    with pytest.raises(ValueError, match=r"site 'y' has its parameter 'loc' in torch.float32"):
        AutoCAVI(model).fit(t(0.3))


def test_reproduces_bayesian_gaussian_mixture_from_the_same_responsibilities():
    from models.gmm import GaussianMixtureModel
    from pyro_vae.cavi import BayesianGaussianMixture

    g = torch.Generator().manual_seed(0)
    X = torch.cat([c + torch.randn(20, 2, generator=g, dtype=F64) for c in t([[0, 0], [4, 1]])])
    bgm = BayesianGaussianMixture(2, reg_covar=0.0)
    bgm._priors(bgm._check(X))  # its default priors, as GaussianMixtureModel.from_data's
    resp = torch.softmax(torch.randn(40, 2, generator=g, dtype=F64), -1)
    model = GaussianMixtureModel.from_data(X, 2, precision_parameterization="wishart").double()
    fit = AutoCAVI(
        model, init={"assignment": resp}, blocks=[("means", "precisions")], tol=1e-12
    ).fit(X)
    assert fit.converged_
    # the reference: the hand-written class's iteration from the same responsibilities
    bounds = []
    for _ in range(500):
        bgm._m_step(X, resp)
        bounds.append(bgm._elbo(X, resp))
        resp = torch.softmax(bgm._log_rho(X), dim=1)
        if len(bounds) > 1 and abs(bounds[-1] - bounds[-2]) < 1e-12:
            break
    bgm._m_step(X, resp)
    q = fit.fitted_blocks_["means+precisions"]
    assert relative(fit.lower_bound_, bgm._elbo(X, resp)) < 1e-6
    assert relative(q.loc, bgm.means_) < 1e-6
    assert relative(q.beta, bgm.mean_precision_) < 1e-6
    assert relative(q.df, bgm.degrees_of_freedom_) < 1e-6
    assert relative(torch.linalg.inv(q.scale), bgm._w_inv) < 1e-6
    marginals = fit.variational_distributions()
    assert relative(marginals["weights"].concentration, bgm.weight_concentration_) < 1e-6
    assert relative(marginals["assignment"].probs, resp) < 1e-6
    assert relative(marginals["precisions"].df, bgm.degrees_of_freedom_) < 1e-6
    assert fit.markov_blankets_ == {
        "weights": ("weights", "assignment"),
        "means+precisions": ("precisions", "means", "x"),
        "assignment": ("assignment", "x"),
    }


def lda(words, n_topics=2, vocabulary=3, alpha=0.5, eta=0.3):
    """Latent Dirichlet allocation (Blei et al. 2003); words: [N, D] ids, N per document."""
    from pyro.ops.indexing import Vindex

    with pyro.plate("topics", n_topics, dim=-1):
        beta = pyro.sample("topic_words", dist.Dirichlet(torch.full((vocabulary,), eta, dtype=F64)))
    with pyro.plate("documents", words.shape[-1], dim=-1):
        theta = pyro.sample("doc_topics", dist.Dirichlet(torch.full((n_topics,), alpha, dtype=F64)))
        with pyro.plate("words", words.shape[0], dim=-2):
            z = pyro.sample("topic", dist.Categorical(theta))
            pyro.sample("word", dist.Categorical(Vindex(beta.unsqueeze(-3))[..., z, :]), obs=words)


def log_polya(counts, a):
    """log ∫ Π_i p_i^{c_i} Dirichlet(p; a 1) dp, a sequence's Dirichlet-multinomial."""
    counts = counts.to(F64)
    total = a * len(counts)
    return float(
        math.lgamma(total) - math.lgamma(total + counts.sum()) + (torch.lgamma(a + counts)).sum()
    ) - len(counts) * math.lgamma(a)


def lda_evidence_by_enumeration(words, k=2, v=3, alpha=0.5, eta=0.3):
    # θ and β integrate out in closed form given z; sum over all K^(N·D) assignments
    n, d = words.shape
    terms = []
    for zs in itertools.product(range(k), repeat=n * d):
        z = torch.tensor(zs).reshape(n, d)
        lp = sum(log_polya(torch.bincount(z[:, j], minlength=k), alpha) for j in range(d))
        for topic in range(k):
            lp += log_polya(torch.bincount(words[z == topic], minlength=v), eta)
        terms.append(lp)
    return float(torch.logsumexp(torch.tensor(terms, dtype=F64), 0))


def test_lda_bound_is_below_the_evidence_by_enumeration():
    words = torch.tensor([[0, 2], [0, 2], [1, 2]])
    evidence = lda_evidence_by_enumeration(words)
    fit = AutoCAVI(lda, tol=1e-12).fit(words)
    assert fit.converged_
    # two topics the data cannot tell apart: the posterior has two mirror-image modes and
    # mean field sits on one, so the gap is at least about log 2 here
    assert evidence - 2.0 < fit.lower_bound_ < evidence - 0.5
    assert fit.markov_blankets_ == {
        "topic_words": ("topic_words", "word"),
        "doc_topics": ("doc_topics", "topic"),
        "topic": ("topic", "word"),
    }


def test_lda_bound_equals_a_monte_carlo_elbo_of_its_factors():
    g = torch.Generator().manual_seed(0)
    words = torch.cat([torch.randint(0, 3, (6, 2), generator=g), torch.randint(3, 5, (6, 2))], 1)
    fit = AutoCAVI(lda, tol=1e-10).fit(words, 2, 5)
    q = fit.variational_distributions()
    torch.manual_seed(0)
    s = 20000
    beta, theta, z = (q[n].sample((s,)) for n in ("topic_words", "doc_topics", "topic"))
    rows = torch.arange(s)[:, None, None]  # θ: [S, D, K] read at [s, d, z_nd]; β at z_nd, w_nd
    log_p = (
        dist.Dirichlet(torch.full((5,), 0.3, dtype=F64)).log_prob(beta).sum(-1)
        + dist.Dirichlet(torch.full((2,), 0.5, dtype=F64)).log_prob(theta).sum(-1)
        + theta[rows, torch.arange(4), z].log().sum((-1, -2))
        + beta[rows, z, words].log().sum((-1, -2))
    )  # fmt: skip
    log_q = sum(
        q[n].log_prob(x).reshape(s, -1).sum(-1)
        for n, x in (("topic_words", beta), ("doc_topics", theta), ("topic", z))
    )
    terms = log_p - log_q
    stderr = float(terms.std()) / math.sqrt(s)
    assert abs(float(terms.mean()) - fit.lower_bound_) < 4 * stderr


@pytest.mark.slow  # 1,500 SVI steps (8 s idle, 25 s loaded); its bound must be below CAVI's
def test_lda_bound_is_above_a_long_mean_field_svi_run():
    from pyro.infer import SVI, TraceEnum_ELBO
    from torch.distributions import constraints

    g = torch.Generator().manual_seed(0)
    words = torch.cat(
        [torch.randint(0, 3, (12, 3), generator=g), torch.randint(3, 6, (12, 3), generator=g)], 1
    )
    fit = AutoCAVI(lda, tol=1e-10).fit(words, 2, 6)

    def guide(words, n_topics, vocabulary):  # the same mean-field family as CAVI's
        b = pyro.param("b", torch.ones(n_topics, vocabulary, dtype=F64), constraints.positive)
        a = pyro.param("a", torch.ones(words.shape[1], n_topics, dtype=F64), constraints.positive)
        r = pyro.param("r", lambda: dist.Dirichlet(torch.ones(words.shape + (2,))).sample().to(F64),
                       constraint=constraints.simplex)  # fmt: skip
        with pyro.plate("topics", n_topics, dim=-1):
            pyro.sample("topic_words", dist.Dirichlet(b))
        with pyro.plate("documents", words.shape[-1], dim=-1):
            pyro.sample("doc_topics", dist.Dirichlet(a))
            with pyro.plate("words", words.shape[0], dim=-2):
                # enumerated in the guide: E over q(z) exact, as in CAVI's bound
                pyro.sample("topic", dist.Categorical(r), infer={"enumerate": "parallel"})

    optim = pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.1 ** (1 / 1500)})
    svi = SVI(lda, guide, optim, TraceEnum_ELBO(max_plate_nesting=2))
    for _ in range(1500):
        svi.step(words, 2, 6)
    estimate = TraceEnum_ELBO(max_plate_nesting=2, num_particles=2000, vectorize_particles=True)
    losses = torch.tensor([estimate.loss(lda, guide, words, 2, 6) for _ in range(2)])
    svi_bound = -float(losses.mean())
    assert svi_bound < fit.lower_bound_ + 4 * float(losses.std())
    assert svi_bound > fit.lower_bound_ - 2.0  # SVI got close: the comparison can fail


def factorial_hmm(t_len=4):
    from pyro_vae.cavi import FactorialHMM

    g = torch.Generator().manual_seed(1)
    stay = torch.full((2, 3, 3), 0.1, dtype=F64) + 0.7 * torch.eye(3, dtype=F64)
    params = FactorialHMM(
        log_pi=torch.full((2, 3), 1 / 3, dtype=F64).log(),
        log_A=stay.log(),
        W=2.0 * torch.randn(2, 2, 3, generator=g, dtype=F64),
        C=0.8 * torch.eye(2, dtype=F64),
    )
    return params, params.sample(t_len, seed=2)[1]


def test_markov_chains_site_by_site_reproduce_naive_mean_field():
    # pyro.markov's sites s_{m}_{t}, one Categorical factor each: NaiveMeanField's family.
    # Its transition matrix has equal off-diagonal entries, so a probe that moves s_{t-1}
    # can leave log A[s_{t-1}, s_t] unchanged: dependencies come from provenance instead.
    from models.hmm import FactorialHMMModel
    from pyro_vae.cavi import NaiveMeanField

    params, y = factorial_hmm()
    naive = NaiveMeanField(params, random_state=0, tol=1e-12).fit(y)
    g = torch.Generator().manual_seed(0)  # NaiveMeanField's start for random_state=0
    start = torch.softmax(torch.randn(y.shape[0], 2, 3, generator=g, dtype=F64), -1)
    init = {f"s_{m}_{t}": start[t, m] for t in range(y.shape[0]) for m in range(2)}
    model = FactorialHMMModel(params).double()
    fit = AutoCAVI(model, init=init, tol=1e-12, markov_chains=False).fit(y)
    assert fit.markov_blankets_["s_0_2"] == ("s_0_2", "y_2", "s_0_3")
    assert relative(fit.lower_bound_, naive.lower_bound_) < 1e-6
    q = fit.variational_distributions()
    probs = torch.stack(
        [torch.stack([q[f"s_{m}_{t}"].probs for m in range(2)]) for t in range(len(y))]
    )
    assert float((probs - naive.expectations_).abs().max()) < 1e-6


def test_markov_chains_kept_whole_reproduce_structured_mean_field():
    # each chain one factor of q, updated by forward-backward: StructuredMeanField's
    # family and update order (chain 0, then chain 1), so every sweep's bound matches
    from models.hmm import FactorialHMMModel
    from pyro_vae.cavi import StructuredMeanField

    params, y = factorial_hmm()
    structured = StructuredMeanField(params, random_state=0, tol=0.0, max_iter=8).fit(y)
    g = torch.Generator().manual_seed(0)
    start = torch.softmax(torch.randn(y.shape[0], 2, 3, generator=g, dtype=F64), -1)
    init = {f"s_{m}_{t}": start[t, m] for t in range(y.shape[0]) for m in range(2)}
    model = FactorialHMMModel(params).double()
    fit = AutoCAVI(model, init=init, tol=0.0, max_iter=8).fit(y)
    assert sorted(fit.fitted_chains_) == [
        tuple(f"s_{m}_{t}" for t in range(len(y))) for m in range(2)
    ]
    assert relative(fit.lower_bounds_, structured.lower_bounds_) < 1e-6
    marginals = torch.stack([fit.fitted_chains_[c][0] for c in sorted(fit.fitted_chains_)], 1)
    assert float((marginals - structured.expectations_).abs().max()) < 1e-6


def test_a_prior_draw_with_an_infinite_log_density_still_gives_the_exact_evidence():
    # μ ~ N(0, (1e200)²): its prior draw is ~1e200, where (y − μ)² overflows and the
    # likelihood's log-density is −inf; the probe runs' reference point is then a run at
    # probe values. One latent: the bound is the evidence, in closed form as s → ∞ (the
    # neglected terms are O(1/s²) = 1e-400): log p(y) = −log s − ½ log 2π
    # − (n − 1)/2 log 2π − ½ log n − ½ Σ (y − ȳ)².
    from pyro_vae.cavi.first_trace import first_run, reference_is_finite

    s = 1e200
    y = t([0.3, -1.2, 2.0, 0.7])

    def model(y):
        mu = pyro.sample("mu", dist.Normal(t(0.0), t(s)))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    assert not reference_is_finite(first_run(model, (y,), {}, 0)[0])
    n = len(y)
    evidence = (
        -math.log(s) - 0.5 * math.log(2 * math.pi) - (n - 1) / 2 * math.log(2 * math.pi)
        - 0.5 * math.log(n) - 0.5 * float(((y - y.mean()) ** 2).sum())
    )  # fmt: skip
    fit = AutoCAVI(model, tol=1e-12).fit(y)
    assert fit.probe_batched_
    assert fit.lower_bound_ == pytest.approx(evidence, rel=1e-10)


def test_an_observation_outside_its_support_is_refused_naming_the_site():
    # the seeded first run is not validated (for speed); the validated run after a
    # failure reads the observations as check_observations does, naming the site
    def model(x):
        p = pyro.sample("p", dist.Beta(t(1.0), t(1.0)))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Bernoulli(p), obs=x)

    with pytest.raises(ValueError, match=r"site 'x': values outside the support Boolean"):
        AutoCAVI(model).fit(t([0.0, 1.0, 2.0]))


def test_an_observation_past_the_last_category_is_refused_naming_the_site():
    # unvalidated, Categorical.log_prob of 3 with 3 categories is an index error; the first
    # run is then repeated validated, and its observations read, naming the site
    def model(c):
        p = pyro.sample("p", dist.Dirichlet(torch.ones(3, dtype=F64)))
        with pyro.plate("data", len(c)):
            pyro.sample("c", dist.Categorical(p), obs=c)

    with pytest.raises(ValueError, match=r"site 'c': values outside the support Integer"):
        AutoCAVI(model).fit(torch.tensor([0, 3, 1]))


@pytest.mark.parametrize(
    "table, prior",
    [([0.0, 3.0], [0.7, 0.3]), ([-3.0, 0.0, 3.0], [0.2, 0.5, 0.3])],
    ids=["Bernoulli", "Categorical"],
)
def test_a_mixture_of_discrete_components_reproduces_hand_written_cavi(table, prior):
    # c_k ~ prior (a Bernoulli when there are 2 values), z_n ~ Cat(π), y_n ~ N(table[c_{z_n}], 1).
    # The fit probes share each discrete latent across its plate, the components' plate
    # included; the mixture's design must still read the component z picks.
    table, prior, pi = t(table), t(prior), t([0.4, 0.6])
    y = t([2.9, -0.2, 3.4, 0.5, -2.8])
    bernoulli = len(table) == 2

    def model(y):
        with pyro.plate("components", 2):
            if bernoulli:
                c = pyro.sample("c", dist.Bernoulli(prior[1])).long()
            else:
                c = pyro.sample("c", dist.Categorical(prior))
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(pi))
            loc = Vindex(table)[..., Vindex(c.unsqueeze(-2))[..., z]]
            pyro.sample("y", dist.Normal(loc, 1.0), obs=y)

    r = torch.softmax(torch.randn(len(y), 2, generator=torch.Generator().manual_seed(0),
                                  dtype=F64), -1)  # fmt: skip
    fit = AutoCAVI(model, init={"z": r}, tol=0.0, max_iter=5).fit(y)
    # hand-written mean-field CAVI, in AutoCAVI's order (c, then z, which init sets)
    ell = dist.Normal(table, 1.0).log_prob(y.unsqueeze(-1))  # [N, J]: log N(y_n; table_j, 1)
    bounds = []
    for _ in range(5):
        gamma = torch.softmax(prior.log() + r.T @ ell, -1)  # q(c_k = j), [K, J]
        r = torch.softmax(pi.log() + ell @ gamma.T, -1)  # q(z_n = k), [N, K]
        entropy = -(gamma * gamma.log()).sum() - (r * r.log()).sum()
        expected = (gamma @ prior.log()).sum() + (r @ pi.log()).sum() + (r * (ell @ gamma.T)).sum()
        bounds.append(float(expected + entropy))
    assert relative(fit.lower_bounds_, bounds) < 1e-10
    q = fit.variational_distributions()
    assert relative(q["z"].probs, r) < 1e-8
    probs = torch.stack([1 - q["c"].probs, q["c"].probs], -1) if bernoulli else q["c"].probs
    assert relative(probs, gamma) < 1e-8


def test_a_one_component_mixture_is_the_exact_evidence():
    # K = 1 (the first of a sweep over K): w ~ Dirichlet([1]) is 1, log w = 0 at every probe,
    # so the factor of w is rank deficient in a way counting rows cannot see; its minimum-norm
    # coefficient is 0. μ is then the one latent: the bound is log N(y; 0, s² 11ᵀ + I).
    y = t([-3.1, 0.4, 4.2, -2.5, 0.1, 3.8])

    def model(y):
        w = pyro.sample("w", dist.Dirichlet(torch.ones(1, dtype=F64)))
        with pyro.plate("components", 1):
            mu = pyro.sample("mu", dist.Normal(t(0.0), 5.0))
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("y", dist.Normal(Vindex(mu.unsqueeze(-2))[..., z], 1.0), obs=y)

    cov = 25.0 * torch.ones(6, 6, dtype=F64) + torch.eye(6, dtype=F64)
    evidence = float(dist.MultivariateNormal(torch.zeros(6, dtype=F64), cov).log_prob(y))
    fit = AutoCAVI(model, tol=1e-12).fit(y)
    assert fit.lower_bound_ == pytest.approx(evidence, rel=1e-10)


def test_data_off_the_cpu_is_refused_naming_the_argument_before_any_run():
    # meta stands in for a GPU on CI: AutoCAVI's solves are tiny and run on the CPU
    calls = []

    def model(y):
        calls.append(1)
        pyro.sample("mu", dist.Normal(t(0.0), t(1.0)))

    y = torch.zeros(3, dtype=F64, device="meta")
    with pytest.raises(ValueError, match=r"argument 0: a tensor of shape \(3,\) is on meta"):
        AutoCAVI(model).fit(y)
    with pytest.raises(ValueError, match=r"argument 'data'\[1\]: .* on meta.*\.cpu\(\)"):
        AutoCAVI(model).fit(data=[t(1.0), y])
    assert not calls


# Probing where q is (pyro_vae.cavi.probe_frames). A fit's factors are solved from the
# model's log-densities at probe points; drawn at N(0, 1) for a mean near 10⁶, the
# log-densities there are about −10¹², float64 keeps them to about 10⁻⁴, and the curvature
# coefficient came out wrong by that much times E_q[μ²] ≈ 10¹² (a bound 2.4·10⁸ nats low,
# the mean 220 posterior sds off). Re-probed around q, in q's local coordinates, and the
# bound summed there, every number below is exact to float64 rounding of order-one terms.


def normal_mean_model(y, prior_scale):
    mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), prior_scale))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


@pytest.mark.parametrize("offset", [0.0, 1e4, 1e6])
def test_data_far_from_zero_are_fitted_to_the_closed_form_posterior(offset):
    y = offset + t([0.3, -1.1, 0.5, 1.7, -0.4])
    prior_scale = 10 * max(offset, 1.0)
    fit = AutoCAVI(normal_mean_model, tol=1e-12).fit(y, prior_scale)
    q = fit.variational_distributions()["mu"]
    n, precision = len(y), 1 / prior_scale**2 + len(y)
    mean, sd = float(y.sum()) / precision, precision**-0.5
    assert abs(float(q.mean) - mean) < 1e-6 * sd
    assert relative(q.stddev, sd) < 1e-9
    # q is the exact posterior (one latent), so the bound is log p(y), y ~ N(0, s₀² 11ᵀ + I):
    # the residuals about ȳ are N(0, I) and ȳ ~ N(0, s₀² + 1/n) (no 10¹² terms to cancel)
    centred = float((y - y.mean()).pow(2).sum())
    exact = (
        -(n - 1) / 2 * math.log(2 * math.pi) - 0.5 * math.log(n) - centred / 2
        + float(dist.Normal(t(0.0), t(math.sqrt(prior_scale**2 + 1 / n))).log_prob(y.mean()))
    )  # fmt: skip
    assert abs(fit.lower_bound_ - exact) < 1e-9
    # probed again around q only where it lies far from the first points
    assert (fit.probe_rounds_ > 1) == (offset > 0)


def test_poisson_counts_near_a_million_are_fitted_to_the_closed_form_posterior():
    y = 1e6 + t([12.0, -340.0, 95.0, 1021.0, -7.0])
    a, b = 2.0, 2e-6  # prior mean 10⁶

    def model(y):
        rate = pyro.sample("rate", dist.Gamma(y.new_tensor(a), y.new_tensor(b)))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Poisson(rate), obs=y)

    fit = AutoCAVI(model, tol=1e-12).fit(y)
    q = fit.variational_distributions()["rate"]
    shape, rate = a + float(y.sum()), b + len(y)
    assert relative(q.concentration, shape) < 1e-9 and relative(q.rate, rate) < 1e-9
    exact = (
        a * math.log(b) - math.lgamma(a) + math.lgamma(shape) - shape * math.log(rate)
        - float(torch.lgamma(y + 1).sum())
    )  # fmt: skip
    # the bound's terms include Σ log y! ≈ 6.5·10⁷, which float64 holds to about 10⁻⁸
    assert abs(fit.lower_bound_ - exact) < 1e-7


def test_a_factor_conjugate_only_near_the_first_points_is_probed_again_where_q_is():
    # y ~ N(clamp(μ, max=10), 1) is μ's Normal likelihood below 10 and constant above it.
    # The first points (N(0, 1)) all fall below; the posterior, μ ~ N(100, 1) a priori, sits
    # 90 sds above, where y does not depend on μ: q is the prior and the bound log p(y).
    y = t([9.5, 10.2, 10.8])

    def model(y):
        mu = pyro.sample("mu", dist.Normal(y.new_tensor(100.0), 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu.clamp(max=10.0), 1.0), obs=y)

    fit = AutoCAVI(model).fit(y)
    q = fit.variational_distributions()["mu"]
    assert fit.probe_rounds_ > 1
    assert abs(float(q.mean) - 100.0) < 1e-9 and abs(float(q.stddev) - 1.0) < 1e-9
    exact = float(dist.Normal(10.0, 1.0).log_prob(y).sum())  # P(μ < 10) = Φ(−90) ≈ 0
    assert abs(fit.lower_bound_ - exact) < 1e-9


def _normal_clamped_above(kink):
    def model(y):
        mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 10.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu.clamp(max=kink), 1.0), obs=y)

    return model


def _precision_clamped_below(y):
    tau = pyro.sample("tau", dist.Gamma(y.new_tensor(1.0), 0.01))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(0.0, tau.clamp(min=0.05).rsqrt()), obs=y)


def _probability_clamped_above(k):
    p = pyro.sample("p", dist.Beta(k.new_tensor(1.0), 1.0))
    pyro.sample("k", dist.Binomial(200, probs=p.clamp(max=0.95)), obs=k)


@pytest.mark.parametrize(
    "case",
    [
        "normal-kink-3", "normal-kink-12", "normal-kink-40", "gamma-kink", "beta-kink",
    ],
)  # fmt: skip
def test_a_factor_conjugate_only_short_of_where_q_settles_is_refused(case):
    # The probe points (N(0, 1); lognormal(0, 0.7); Beta's on [0.05, 0.95]) all fall on the
    # conjugate side of the kink, and q settles beyond it: unchecked there, these fitted
    # silently, with bounds 25.6, 92.7 and 5.5 nats above the clamped models' log evidence
    # (quadrature). Checked at points drawn from q, the factor is refused by name.
    g = torch.Generator().manual_seed(9)
    if case.startswith("normal"):
        kink = float(case.rsplit("-", 1)[1])
        model, data, factor = (
            _normal_clamped_above(kink),
            kink + 1 + torch.randn(50, generator=g, dtype=F64),
            "y",
        )
    elif case == "gamma-kink":  # the data put τ near 0.01, below the clamp at 0.05
        model, data, factor = (
            _precision_clamped_below,
            10.0 * torch.randn(50, generator=g, dtype=F64),
            "y",
        )
    else:  # 199 of 200: q(p) = Beta(200, 2), near 0.99, above the clamp at 0.95
        model, data, factor = _probability_clamped_above, t(199.0), "k"
    with pytest.raises(NotConjugateError, match=f"factor '{factor}'"):
        AutoCAVI(model).fit(data)


def test_discrete_latents_are_updated_after_the_others_fit_their_drawn_start():
    # Spike and slab, y = Σ_j x_j s_j b_j + ε: updated first, each s_j saw E[b_j] = 0 (its
    # prior's mean) and switched off, whatever the seeded start: every seed ended at -61.90
    # with all slabs off. Updated after the b_j, the drawn start is what they fit first,
    # so the seeds reach different optima, one with s₀ on as the exact posterior has it
    # (P(s₀ = 1 | y) = 1.0 by enumeration); every bound stays below log p(y).
    g = torch.Generator().manual_seed(5)
    X = torch.randn(8, 3, generator=g, dtype=F64)
    y = X @ t([1.5, 0.0, -1.0]) + 0.5 * torch.randn(8, generator=g, dtype=F64)

    def model(X, y):
        mean = 0.0
        for j in range(3):
            s = pyro.sample(f"s{j}", dist.Bernoulli(X.new_tensor(0.3)))
            b = pyro.sample(f"b{j}", dist.Normal(X.new_tensor(0.0), 1.0))
            mean = mean + X[:, j] * s * b
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mean, 0.5), obs=y)

    terms = []
    for on in itertools.product([0.0, 1.0], repeat=3):
        Xs = X * t(on)
        cov = Xs @ Xs.T + 0.25 * torch.eye(8, dtype=F64)
        prior = sum(math.log(0.3 if o else 0.7) for o in on)
        terms.append(
            prior + float(dist.MultivariateNormal(torch.zeros(8, dtype=F64), cov).log_prob(y))
        )
    evidence = float(torch.logsumexp(t(terms), 0))
    fits = [
        AutoCAVI(model, tol=1e-12, max_iter=5000, random_state=seed).fit(X, y) for seed in range(4)
    ]
    bounds = [fit.lower_bound_ for fit in fits]
    assert max(bounds) < evidence and len({round(b, 6) for b in bounds}) > 1
    best = fits[bounds.index(max(bounds))]
    assert float(best.variational_distributions()["s0"].probs) > 0.99
    # n_init = 4 keeps the best of those four starts (its factors probed once, at seed 0's
    # points: the same to float64 rounding, 1e-13, as each seed's own)
    kept = AutoCAVI(model, tol=1e-12, max_iter=5000, n_init=4).fit(X, y)
    assert kept.lower_bound_ == pytest.approx(max(bounds), abs=1e-9)
    assert kept.n_iter_ == best.n_iter_
    q, q_best = kept.variational_distributions(), best.variational_distributions()
    assert all(torch.allclose(q[f"s{j}"].probs, q_best[f"s{j}"].probs) for j in range(3))


def test_exponential_and_chi2_priors_are_gamma_latents_with_the_exact_evidence():
    # Exponential(λ₀) = Gamma(1, λ₀) on a Poisson rate: q = Gamma(1 + Σy, λ₀ + N) and
    # log p(y) = log λ₀ + lgamma(1 + Σy) − (1 + Σy) log(λ₀ + N) − Σ log y!.
    counts = t([3.0, 0.0, 5.0, 2.0, 4.0])

    def poisson(y):
        rate = pyro.sample("rate", dist.Exponential(y.new_tensor(0.5)))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Poisson(rate), obs=y)

    fit = AutoCAVI(poisson, tol=1e-12).fit(counts)
    total, n = float(counts.sum()), len(counts)
    evidence = (
        math.log(0.5) + math.lgamma(1 + total) - (1 + total) * math.log(0.5 + n)
        - float(torch.lgamma(counts + 1).sum())
    )  # fmt: skip
    q = fit.variational_distributions()["rate"]
    assert fit.lower_bound_ == pytest.approx(evidence, abs=1e-10)
    assert float(q.concentration) == pytest.approx(1 + total, rel=1e-12)
    assert float(q.rate) == pytest.approx(0.5 + n, rel=1e-12)
    # Chi2(ν) = Gamma(ν/2, 1/2) on a precision τ of N(0, 1/τ) data: q = Gamma(ν/2 + N/2,
    # 1/2 + Σy²/2) and log p(y) = lgamma(a) − lgamma(ν/2) + (ν/2) log ½ − a log b − N/2 log 2π.
    y = t([0.4, -1.3, 0.9, 2.1, -0.2, 0.7])

    def precision(y):
        tau = pyro.sample("tau", dist.Chi2(y.new_tensor(3.0)))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(0.0, tau.rsqrt()), obs=y)

    fit = AutoCAVI(precision, tol=1e-12).fit(y)
    a, b = 1.5 + len(y) / 2, 0.5 + float((y**2).sum()) / 2
    evidence = (
        math.lgamma(a) - math.lgamma(1.5) + 1.5 * math.log(0.5) - a * math.log(b)
        - len(y) / 2 * math.log(2 * math.pi)
    )  # fmt: skip
    assert fit.lower_bound_ == pytest.approx(evidence, abs=1e-10)


def test_a_kink_once_found_at_q_stays_found_after_probing_again(monkeypatch):
    # y ~ N(where(μ > c, μ + 50, μ), 1) with c 1.5 posterior sds past q's mean: a round's
    # points from q reach past c only now and then. Once they have, a re-probe's fresh
    # points must not accept the factor: before the misses were kept as witnesses, all 9
    # of 40 seeds whose check found the kink still fitted, 0.069 nats above log p(y).
    import pyro_vae.cavi.auto as auto_module

    found = []
    checked = auto_module.worst_misfit

    def spy(*args, **kwargs):
        result = checked(*args, **kwargs)
        found.append(result is not None)
        return result

    monkeypatch.setattr(auto_module, "worst_misfit", spy)
    y = 6.0 + torch.randn(20, generator=torch.Generator().manual_seed(1), dtype=F64)
    precision = 20 + 0.01
    kink = 20 * float(y.mean()) / precision + 1.5 * precision**-0.5

    def model(y):
        mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 10.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(torch.where(mu > kink, mu + 50.0, mu), 1.0), obs=y)

    refused = 0
    for seed in range(10):
        found.clear()
        try:
            AutoCAVI(model, random_state=seed).fit(y)
            assert not any(found), f"seed {seed}: found at q, then fitted"
        except NotConjugateError as error:
            assert "factor 'y'" in str(error)
            refused += 1
    # half the 16 points from q widened 3 times reach past c: each fit misses the kink
    # with probability about 3% (10 of 40 seeds fitted with all 16 from q, 40 of 40 first)
    assert refused >= 9


def test_a_kink_in_a_likelihood_of_1e9_nats_is_refused():
    # 2000 data spread 1000 around 10 (|log f| ≈ 10⁹), their mean's posterior sd 0.022, and
    # a jump of 20 sds in the mean 4 sds below the data's mean: about 200 nats of misfit at
    # q, 2e-7 of the likelihood's size. Judged against its size alone it passed, q 15.8
    # posterior sds off and the bound 10.5 nats above log p(y) (quadrature); judged against
    # float64's rounding there, it is refused.
    g = torch.Generator().manual_seed(0)
    y = 10.0 + 1000.0 * torch.randn(2000, generator=g, dtype=F64)
    sd = (2000 + 0.01) ** -0.5
    kink, jump = float(y.mean()) - 4 * sd, 20 * sd

    def model(y):
        mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 10.0))
        loc = torch.where(mu > kink, mu + jump, mu).unsqueeze(-1).expand(mu.shape + y.shape)
        pyro.sample("y", dist.Normal(loc, 1.0).to_event(1), obs=y)

    with pytest.raises(NotConjugateError, match="factor 'y'"):
        AutoCAVI(model).fit(y)


def test_conjugate_factors_of_huge_counts_warn_of_rounding_and_are_not_refused():
    # Beta-Binomial with n = 10¹¹ trials: the check at q misses by float64 rounding only;
    # it fits with the rounding warning, near log p(k) = log B(1 + k, 1 + n − k) − log B(1, 1)
    # + log C(n, k) (a closed form).
    n, k = 1e11, 3e10

    def model(k):
        p = pyro.sample("p", dist.Beta(k.new_tensor(1.0), 1.0))
        pyro.sample("k", dist.Binomial(n, probs=p), obs=k)

    with pytest.warns(RuntimeWarning, match="float64 rounding") as caught:
        fit = AutoCAVI(model).fit(t(k))
    # counts have no location to centre (tester EI: the warning advised centring them)
    message = str(caught[0].message)
    assert "Centre" not in message and "No latent here has a location to centre" in message
    assert f"{fit.numerical_error_ / abs(fit.lower_bound_):.2g} of the bound" in message
    evidence = (
        math.lgamma(1 + k) + math.lgamma(1 + n - k) - math.lgamma(2 + n)
        + math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
    )  # fmt: skip
    assert abs(fit.lower_bound_ - evidence) < 1e-3


def test_a_tempered_prior_is_a_conjugate_factor():
    # poutine.scale(0.5) on μ's prior N(0, 2²): the tempered prior ∝ N(0, 8) in μ
    y = t([0.3, 1.0, -0.5, 2.0])

    def model(y):
        with pyro.poutine.scale(scale=0.5):
            mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 2.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    q = AutoCAVI(model).fit(y).variational_distributions()["mu"]
    precision = 1 / 8 + len(y)
    assert relative(q.mean, float(y.sum()) / precision) < 1e-12
    assert relative(q.stddev, precision**-0.5) < 1e-12


def test_missing_observations_by_obs_mask_are_latents_of_the_missing_entries_only():
    # Pyro's obs_mask adds a latent "y_unobserved" over every entry, masked off where y is
    # observed: those elements are absent from the joint. The fit equals the same model
    # written with a latent site over the missing entries alone.
    y = t([0.3, 9.9, 1.2, 0.7, 9.9, 1.5])
    observed = torch.tensor([True, False, True, True, False, True])

    def masked(y):
        mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 2.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 0.7), obs=y, obs_mask=observed)

    def explicit(y_observed, n_missing):
        mu = pyro.sample("mu", dist.Normal(y_observed.new_tensor(0.0), 2.0))
        with pyro.plate("observed", len(y_observed)):
            pyro.sample("y", dist.Normal(mu, 0.7), obs=y_observed)
        with pyro.plate("missing", n_missing):
            pyro.sample("y_missing", dist.Normal(mu, 0.7))

    a = AutoCAVI(masked, tol=1e-13).fit(y)
    b = AutoCAVI(explicit, tol=1e-13).fit(y[observed], int((~observed).sum()))
    assert abs(a.lower_bound_ - b.lower_bound_) < 1e-10
    qa, qb = a.variational_distributions(), b.variational_distributions()
    assert relative(qa["mu"].stddev, qb["mu"].stddev) < 1e-12
    assert relative(qa["y_unobserved"].mean[~observed], qb["y_missing"].mean) < 1e-12
    # mean field keeps the exact posterior mean of μ (its fixed point; the bound, stationary
    # there, stops at tol = 1e-13, the mean within about √1e-13 of it) and stays below
    # log p(y_observed)
    n = int(observed.sum())
    precision = 1 / 4 + n / 0.49
    assert relative(qa["mu"].mean, float(y[observed].sum()) / 0.49 / precision) < 1e-6
    cov = 4 * torch.ones(n, n, dtype=F64) + 0.49 * torch.eye(n, dtype=F64)
    exact = float(dist.MultivariateNormal(torch.zeros(n, dtype=F64), cov).log_prob(y[observed]))
    assert a.lower_bound_ < exact


@pytest.mark.parametrize("family", ["Categorical", "Bernoulli"])
def test_labels_given_by_obs_mask_add_nothing_to_the_bound(family):
    """Tester Z's F1: the labelled entries of obs_mask's z_unobserved, which the child
    reads only through torch.where, were held uniform and their log K of entropy counted:
    the bound stood n_labelled·log K above log p(y, labels). With the parameters known the
    z_n are independent given y, so mean field is exact: the bound is the enumerated
    evidence."""
    probs = t([0.2, 0.3, 0.5]) if family == "Categorical" else t([0.4, 0.6])
    means = t([-1.0, 0.5, 2.0])[: len(probs)]
    y = t([-1.2, 0.3, 1.8, -0.5, 2.0, 0.9])
    z = torch.tensor([0, 1, 1, 0, 0, 1])
    labelled = torch.tensor([True, False, True, True, False, False])

    def model(y, z, labelled):
        prior = dist.Categorical(probs) if family == "Categorical" else dist.Bernoulli(probs[1])
        with pyro.plate("d", len(y)):
            drawn = pyro.sample("z", prior, obs=z if family == "Categorical" else z.double(),
                                obs_mask=labelled)  # fmt: skip
            pyro.sample("y", dist.Normal(means[drawn.long()], 1.0), obs=y)

    joint = probs.log() + dist.Normal(means, 1.0).log_prob(y[:, None])  # [N, K]
    exact = float(
        torch.where(labelled, joint.gather(1, z[:, None]).squeeze(1), joint.logsumexp(1)).sum()
    )
    fit = AutoCAVI(model).fit(y, z, labelled)
    assert fit.lower_bound_ == pytest.approx(exact, abs=1e-12)


@pytest.mark.parametrize("y0", [0.0, 0.3])
def test_a_masked_prior_read_by_a_child_is_a_flat_prior_also_where_likelihoods_tie(y0):
    """Tester AB: a first fix of tester Z's F1 called an element absent where its messages
    were constant in x, and a masked-off z whose child's likelihoods tie (y = 0 between
    means ±1) lost its log 2: the bound jumped by log 2 between y = 0 and y = 1e-9. Masked
    and read, z is summed under a flat prior, tie or no tie (enumerated)."""
    means, probs = t([-1.0, 1.0]), t([0.5, 0.5])

    def model(y, m):
        with pyro.plate("d", len(y)):
            with poutine.mask(mask=m):
                z = pyro.sample("z", dist.Categorical(probs))
            pyro.sample("y", dist.Normal(means[z], 1.0), obs=y)

    y, m = t([y0, 0.5]), torch.tensor([False, True])
    joint = dist.Normal(means, 1.0).log_prob(y[:, None])
    exact = float(torch.where(m, (joint + probs.log()).logsumexp(1), joint.logsumexp(1)).sum())
    fit = AutoCAVI(model).fit(y, m)
    assert fit.lower_bound_ == pytest.approx(exact, abs=1e-12) and fit._absent["z"] is None


def test_a_partly_labelled_hmm_by_obs_mask_is_its_enumerated_evidence():
    """Tester Z's F1 in a chain: each labelled step's q was uniform and its log 2 counted
    (its links then depend on its neighbours alone). The chain kept whole is exact with the
    parameters known: the bound is log p(Y, labels) by enumerating the paths."""
    k, steps = 2, 4
    trans, start, means = t([[0.8, 0.2], [0.3, 0.7]]), t([0.6, 0.4]), t([-1.0, 1.0])
    Y = t([[-1.1, -0.7, 1.2, 0.9], [0.8, 1.1, -0.4, -1.3]])
    S = torch.tensor([[0, 0, 1, 1], [1, 1, 0, 0]])
    M = torch.tensor([[True, False, False, True], [False, False, True, False]])

    def model(Y, S, M):
        with pyro.plate("seq", Y.shape[0]):
            s = None
            for i in pyro.markov(range(Y.shape[1])):
                prior = dist.Categorical(start if s is None else Vindex(trans)[..., s, :])
                s = pyro.sample(f"s_{i}", prior, obs=S[:, i], obs_mask=M[:, i])
                pyro.sample(f"y_{i}", dist.Normal(Vindex(means)[..., s], 0.9), obs=Y[:, i])

    exact = 0.0
    for b in range(len(Y)):
        paths = [p for p in itertools.product(range(k), repeat=steps)
                 if all(p[i] == S[b, i] or not M[b, i] for i in range(steps))]  # fmt: skip
        exact += float(torch.stack([
            start[p[0]].log() + sum(trans[p[i - 1], p[i]].log() for i in range(1, steps))
            + sum(dist.Normal(means[p[i]], 0.9).log_prob(Y[b, i]) for i in range(steps))
            for p in paths
        ]).logsumexp(0))  # fmt: skip
    assert AutoCAVI(model).fit(Y, S, M).lower_bound_ == pytest.approx(exact, abs=1e-12)
    assert AutoCAVI(model, markov_chains=False).fit(Y, S, M).lower_bound_ < exact


def test_missing_covariates_by_obs_mask_with_a_child_are_at_mean_fields_optimum():
    """Tester Z's F4: x_unobserved's observed entries, read by y only through
    torch.where, got a zero-precision flat prior and the fit was refused as improper. It
    fits now, at mean field's optimum below the exact log evidence of this Gaussian model
    (m ~ N(0, 4), x_n ~ N(m, 1), y_n ~ N(x_n, 0.25): (x_observed, y) jointly Normal)."""
    x = t([0.5, 0.0, 1.2, 0.0])
    seen = torch.tensor([True, False, True, False])
    y = t([0.7, 1.1, 1.0, -0.3])

    def model(x, seen, y):
        m = pyro.sample("m", dist.Normal(t(0.0), t(2.0)))
        with pyro.plate("d", len(y)):
            xi = pyro.sample("x", dist.Normal(m, 1.0), obs=x, obs_mask=seen)
            pyro.sample("y", dist.Normal(xi, 0.5), obs=y)

    n = len(y)
    # covariances: 4 between any two; + 1 for the same n (x_n's own); + 0.25 for y_n with y_n
    kinds = [("x", int(i)) for i in seen.nonzero().squeeze(-1)] + [("y", i) for i in range(n)]
    cov = t([[4.0 + (i == j) + 0.25 * (a == b == "y" and i == j) for b, j in kinds]
             for a, i in kinds])  # fmt: skip
    values = torch.cat([x[seen], y])
    exact = float(dist.MultivariateNormal(torch.zeros(len(kinds), dtype=F64), cov).log_prob(values))
    # mean field's optimum: the evidence less ½(Σ log diag Λ − log|Λ|), Λ the posterior
    # precision of (m, x_1, x_3): 1/4 + 4 on m (four x_n of unit variance), 1 + 4 on each
    # missing x_n (its prior and its y_n), −1 between them
    lam = t([[4.25, -1.0, -1.0], [-1.0, 5.0, 0.0], [-1.0, 0.0, 5.0]])
    optimum = exact - 0.5 * float(lam.diagonal().log().sum() - torch.logdet(lam))
    fit = AutoCAVI(model, tol=1e-12).fit(x, seen, y)
    assert fit.lower_bound_ == pytest.approx(optimum, abs=1e-9) and optimum < exact
    assert fit._absent["x_unobserved"].tolist() == seen.tolist()


def test_missing_counts_by_obs_mask_are_refused_with_the_mask_that_fits_exactly():
    """Tester 37's F3: obs_mask on a Poisson likelihood was refused ("Poisson is not a
    family AutoCAVI updates") with no way out, even with nothing missing. The refusal now
    names the imputation and the way out, ``.mask(observed)``, whose fit is exact: the
    Gamma(2, 1)-Poisson evidence of the observed counts in closed form,
    a log b − log Γ(a) + log Γ(a + k) − (a + k) log(b + n) − Σ log y! (k their sum, n their
    number), and q(rate) = Gamma(a + k, b + n)."""
    y = t([3.0, 0.0, 5.0, 2.0, 4.0, 1.0])
    observed = torch.tensor([True, True, False, True, True, False])

    def imputed(y, observed):
        rate = pyro.sample("rate", dist.Gamma(t(2.0), t(1.0)))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Poisson(rate), obs=y, obs_mask=observed)

    def left_out(y, observed):
        rate = pyro.sample("rate", dist.Gamma(t(2.0), t(1.0)))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Poisson(rate).mask(observed), obs=torch.where(observed, y, 0.0))

    for mask in (observed, torch.ones(6, dtype=torch.bool)):
        with pytest.raises(NotConjugateError, match=r"obs_mask's imputed entries of 'y'.*"
                           r"For Poisson data, leave the missing entries out"):  # fmt: skip
            AutoCAVI(imputed).fit(y, mask)

    def named_alike(y, observed):  # a latent of the user's own, named as obs_mask names
        rate = pyro.sample("rate", dist.Gamma(t(2.0), t(1.0)))
        pyro.sample("y_unobserved", dist.Poisson(rate))

    with pytest.raises(NotConjugateError, match="Poisson") as raised:
        AutoCAVI(named_alike).fit(y, observed)
    assert "obs_mask" not in str(raised.value)
    fit = AutoCAVI(left_out).fit(y, observed)
    k, n = float(y[observed].sum()), int(observed.sum())
    log_factorials = sum(math.lgamma(v + 1) for v in y[observed].tolist())
    exact = -math.lgamma(2.0) + math.lgamma(2.0 + k) - (2.0 + k) * math.log(1.0 + n)
    assert fit.lower_bound_ == pytest.approx(exact - log_factorials, abs=1e-10)
    q = fit.variational_distributions()["rate"]
    assert (float(q.concentration), float(q.rate)) == pytest.approx((2.0 + k, 1.0 + n))


def test_padding_masked_off_leaves_a_mixture_bound_unchanged():
    y = t([-2.1, -1.5, -2.7, 1.8, 2.2, 2.5])

    def model(y, keep):
        w = pyro.sample("w", dist.Dirichlet(torch.ones(2, dtype=F64)))
        with pyro.plate("components", 2):
            mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 3.0))
        with pyro.plate("data", len(y)), pyro.poutine.mask(mask=keep):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("y", dist.Normal(Vindex(mu)[..., z], 1.0), obs=y)

    plain = AutoCAVI(model, tol=1e-12).fit(y, torch.ones(6, dtype=torch.bool))
    padded = AutoCAVI(model, tol=1e-12).fit(torch.cat([y, torch.zeros(4, dtype=F64)]),
                                            torch.arange(10) < 6)  # fmt: skip
    # a masked-off z has no factor: before, its uniform q's entropy, log 2, entered the bound
    assert abs(padded.lower_bound_ - plain.lower_bound_) < 1e-9


def test_a_deterministic_site_is_no_factor_whatever_the_default_dtype():
    # pyro.deterministic records a Delta that scores 0 in torch's default dtype (float32
    # here), which AutoCAVI's float64 check refused as a float32 factor
    y = t([0.3, 1.0, -0.5])

    def model(y):
        mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 2.0))
        pyro.deterministic("twice_mu", 2 * mu)
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    assert torch.get_default_dtype() == torch.float32
    q = AutoCAVI(model).fit(y).variational_distributions()["mu"]
    precision = 1 / 4 + len(y)
    assert relative(q.mean, float(y.sum()) / precision) < 1e-12


def grouped(y, keep, masking):
    """θ_g ~ N(μ, 1) per group, y_gi ~ N(θ_g, 0.5); ``masking`` masks θ's prior where
    ``keep`` is False ("poutine" on the prior only; "dist": ``.mask`` on θ and on y)."""
    mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 2.0))
    with pyro.plate("groups", y.shape[0], dim=-2):
        prior = dist.Normal(mu, 1.0)
        if masking == "dist":
            prior = prior.mask(keep.unsqueeze(-1))
        with pyro.poutine.mask(mask=keep.unsqueeze(-1) if masking == "poutine" else True):
            theta = pyro.sample("theta", prior)
        with pyro.plate("items", 2, dim=-1):
            likelihood = dist.Normal(theta, 0.5)
            if masking == "dist":
                likelihood = likelihood.mask(keep.unsqueeze(-1))
            pyro.sample("y", likelihood, obs=y)


GROUPS = t([[0.3, 0.9], [5.0, 5.0], [-1.2, -0.4], [7.0, 7.0]])
KEEP = torch.tensor([True, False, True, False])


def test_a_latent_whose_prior_is_masked_but_whose_data_are_not_has_a_flat_prior():
    # θ_g of a masked group keeps its data: q(θ_g) is their posterior under a flat prior,
    # and the group adds log ∫ Π_i N(y_gi; θ, 0.5²) dθ to the bound (closed form below);
    # before, such an element was dropped with its data (bound −310.5)
    masked = AutoCAVI(lambda y: grouped(y, KEEP, "poutine"), tol=1e-12).fit(GROUPS)
    kept = AutoCAVI(lambda y: grouped(y, torch.ones(2, dtype=torch.bool), None), tol=1e-12)
    kept = kept.fit(GROUPS[KEEP])
    flat = 0.0
    for y in GROUPS[~KEEP]:
        n, s = len(y), 0.5
        flat += (
            -(n - 1) / 2 * math.log(2 * math.pi * s**2) - 0.5 * math.log(n)
            - float((y - y.mean()).pow(2).sum()) / (2 * s**2)
        )  # fmt: skip
    assert abs(masked.lower_bound_ - (kept.lower_bound_ + flat)) < 1e-9


def test_a_masked_distribution_is_the_model_without_its_masked_elements():
    masked = AutoCAVI(lambda y: grouped(y, KEEP, "dist"), tol=1e-12).fit(GROUPS)
    kept = AutoCAVI(lambda y: grouped(y, torch.ones(2, dtype=torch.bool), None), tol=1e-12)
    assert abs(masked.lower_bound_ - kept.fit(GROUPS[KEEP]).lower_bound_) < 1e-9


def test_a_block_whose_first_update_is_improper_is_probed_again_at_its_prior():
    # a Normal-Gamma block with its prior centred on data near 10⁵: the first points (μ at
    # N(0, 1)) left τ's rate, a difference of terms of 10¹⁰, negative; probed again around
    # the prior, the block is the exact posterior and its bound the exact log evidence
    g = torch.Generator().manual_seed(4)
    y = 1e5 + torch.randn(5, generator=g, dtype=F64)
    a0, b0, lam0, m0 = 2.0, 1.0, 1.0, 1e5

    def model(y):
        tau = pyro.sample("tau", dist.Gamma(y.new_tensor(a0), y.new_tensor(b0)))
        mu = pyro.sample("mu", dist.Normal(y.new_tensor(m0), (lam0 * tau).rsqrt()))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, tau.rsqrt()), obs=y)

    fit = AutoCAVI(model, blocks="auto").fit(y)
    n, mean = len(y), float(y.mean())
    lam_n, shape = lam0 + n, a0 + n / 2
    rate = b0 + 0.5 * (float((y - mean).pow(2).sum()) + lam0 * n * (mean - m0) ** 2 / lam_n)
    exact = (
        -n / 2 * math.log(2 * math.pi) + 0.5 * math.log(lam0 / lam_n) + a0 * math.log(b0)
        - shape * math.log(rate) + math.lgamma(shape) - math.lgamma(a0)
    )  # fmt: skip
    assert fit.probe_rounds_ > 1
    assert abs(fit.lower_bound_ - exact) < 1e-8
    # the frame at the prior is made from the dependency run's distributions, whose
    # parameters carry provenance tracking; it reached every factor probed in it, and q's
    # parameters came out as that private tensor subclass
    q = fit.fitted_blocks_["mu+tau"]
    parameters = (q.loc, q.precision, q.concentration, q.rate)
    assert all(type(p) is torch.Tensor for p in parameters)
    assert all(type(f.coefficients) is torch.Tensor for f in fit._factors)


def test_a_normal_wishart_block_near_a_million_is_the_exact_posterior():
    # (μ, Λ) ~ Normal-Wishart centred on data near 10⁶: the block is the exact posterior,
    # its bound the closed-form evidence (Bishop 2006, §2.3.6). Its update in the model's
    # coordinates, W⁻¹ = Σ xxᵀ − β m mᵀ + …, subtracts terms of 10¹³ (3e-7 nats off); made
    # in q's local coordinates, it is exact to float64 rounding of order-one terms.
    g = torch.Generator().manual_seed(5)
    x = 1e6 + torch.randn(10, 2, generator=g, dtype=F64)
    w0_inverse, beta0, nu0 = t([[2.0, 0.5], [0.5, 1.0]]), 1.0, 3.0
    m0 = t([0.5, 0.25]) + 1e6

    def model(x):
        lam = pyro.sample(
            "L", dist.Wishart(x.new_tensor(nu0), covariance_matrix=torch.linalg.inv(w0_inverse))
        )
        mu = pyro.sample("mu", dist.MultivariateNormal(m0, precision_matrix=beta0 * lam))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.MultivariateNormal(mu, precision_matrix=lam), obs=x)

    fit = AutoCAVI(model, blocks="auto").fit(x)
    n, d = x.shape
    mean = x.mean(0)
    centred = x - mean
    beta_n, nu_n = beta0 + n, nu0 + n
    wn_inverse = w0_inverse + centred.T @ centred
    wn_inverse = wn_inverse + beta0 * n / beta_n * torch.outer(mean - m0, mean - m0)
    exact = float(
        -n * d / 2 * math.log(math.pi) + d / 2 * math.log(beta0 / beta_n)
        + torch.mvlgamma(t(nu_n / 2), d) - torch.mvlgamma(t(nu0 / 2), d)
        + nu0 / 2 * torch.logdet(w0_inverse) - nu_n / 2 * torch.logdet(wn_inverse)
    )  # fmt: skip
    assert fit.blocks_ == [("mu", "L")] and fit.probe_rounds_ > 1
    assert abs(fit.lower_bound_ - exact) < 1e-9


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_poisson_rates_under_a_vague_gamma_prior_with_zero_counts_take_one_round():
    # λ_i ~ Gamma(1e-4, 1e-4), y_i ~ Poisson(λ_i e_i), a third of the counts 0: those q(λ_i)
    # have shape 1e-4 and E_q[log(λ/E λ)] = ψ(a) − log a ≈ −10⁴, which no frame x = c·u can
    # remove. Counted as distance from the points, it made AutoCAVI probe 10 times and warn
    # of 2e-7 nats while exact. log p(y) is a product of Gamma-Poisson marginals.
    def model(y, e):
        with pyro.plate("items", len(y)):
            lam = pyro.sample("lam", dist.Gamma(y.new_tensor(1e-4), y.new_tensor(1e-4)))
            pyro.sample("y", dist.Poisson(lam * e), obs=y)

    g = torch.Generator().manual_seed(13)
    e = 0.5 + 5 * torch.rand(30, generator=g, dtype=F64)
    y = torch.poisson((0.5 + 4 * torch.rand(30, generator=g, dtype=F64)) * e, generator=g)
    y[:10] = 0
    a = b = 1e-4
    exact = sum(
        k * math.log(x) - math.lgamma(k + 1) + a * math.log(b) - math.lgamma(a)
        + math.lgamma(a + k) - (a + k) * math.log(b + x)
        for k, x in zip(y.tolist(), e.tolist(), strict=True)
    )  # fmt: skip
    fit = AutoCAVI(model).fit(y, e)
    assert fit.probe_rounds_ == 1
    assert fit.lower_bound_ == pytest.approx(exact, abs=1e-8)


def test_a_beta_latent_with_a_tiny_concentration_warns_of_its_rounding():
    # p ~ Beta(a, 1), ten Binomial(10⁴, p) counts of 0: E_q[log p] ≈ −1/a. The Beta takes
    # no frame, so the estimate left it out: with a = 1e-8 the bound came out off by up to
    # 0.58 nats (10⁶ trials), even above log p(y), without a warning. Now it warns; with
    # a = 1 it is exact and silent: log p(y) = log B(1, 1 + 10⁵) − log B(1, 1) = −log(10⁵ + 1).
    def model(k):
        p = pyro.sample("p", dist.Beta(k.new_tensor(a), k.new_tensor(1.0)))
        with pyro.plate("n", len(k)):
            pyro.sample("k", dist.Binomial(k.new_tensor(1e4), p), obs=k)

    k = torch.zeros(10, dtype=F64)
    a = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fit = AutoCAVI(model).fit(k)
    assert fit.lower_bound_ == pytest.approx(-math.log(1e5 + 1), abs=1e-9)
    a = 1e-8
    with pytest.warns(RuntimeWarning, match="AutoCAVI: after"):
        AutoCAVI(model).fit(k)


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("chain", [False, True], ids=["mixture", "hmm-chain"])
def test_assignments_far_from_zero_are_updated_without_cancellation(chain):
    # three Normal components (known noise) with N(shift, 10²) means; data shifted by 10⁹,
    # as an i.i.d. mixture or a chain under pyro.markov kept whole. The assignments' (and
    # the chain's) messages −½(y² − 2yE[μ] + E[μ²]) were made from natural coefficients:
    # terms of 10¹⁸ cancelling left q off its fixed point, −73.7 against −24.2 unshifted
    # (a tester's case), without a warning. They are now made from the local ones.
    k = 3
    g = torch.Generator().manual_seed(23)
    states = torch.tensor([0, 0, 1, 1, 1, 0, 2])
    y0 = torch.linspace(-6, 6, k, dtype=F64)[states] + torch.randn(7, generator=g, dtype=F64)
    y0 = y0 - y0.mean()
    stay = torch.full((k, k), 0.1, dtype=F64).fill_diagonal_(0.8)

    def shifted(shift):
        def model(y):
            with pyro.plate("K", k):
                mu = pyro.sample("mu", dist.Normal(y.new_tensor(shift), 10.0))
            if not chain:
                with pyro.plate("n", len(y)):
                    z = pyro.sample("z", dist.Categorical(torch.full((k,), 1 / k, dtype=F64)))
                    pyro.sample("y", dist.Normal(Vindex(mu)[z], 1.0), obs=y)
                return
            z = None
            for i in pyro.markov(range(len(y))):
                probs = torch.full((k,), 1 / k, dtype=F64) if z is None else stay[z]
                z = pyro.sample(f"z_{i}", dist.Categorical(probs))
                pyro.sample(f"y_{i}", dist.Normal(Vindex(mu.unsqueeze(-2))[..., z], 1.0), obs=y[i])

        return model

    bounds = [AutoCAVI(shifted(s), random_state=0).fit(y0 + s).lower_bound_ for s in (0.0, 1e9)]
    # y0 + 10⁹ holds y0 to about 6e-8 (float64's spacing there is 1.2e-7)
    assert bounds[1] == pytest.approx(bounds[0], abs=1e-6)


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_a_normal_wishart_mixture_a_million_from_zero_converges_as_unshifted():
    from models.gmm import GaussianMixtureModel

    # two anisotropic clusters, blocked (means, precisions), tol 1e-10. At 10⁶ the
    # responsibilities' messages, made from natural coefficients, carried rounding of
    # about 1e-7 nats into every sweep: the bound wandered ±7e-7 and stopped after some
    # 600 sweeps by chance (1000 without converging at an earlier commit); unshifted, 53.
    g = torch.Generator().manual_seed(2)
    centres = 20.0 * torch.randn(2, 2, generator=g, dtype=F64)
    mixing = 0.7 * torch.randn(2, 2, 2, generator=g, dtype=F64)
    X = torch.cat([centres[j] + torch.randn(10, 2, generator=g, dtype=F64) @ mixing[j]
                   for j in range(2)])  # fmt: skip
    fits = []
    for shift in (0.0, 1e6):
        model = GaussianMixtureModel.from_data(
            X + shift, 2, precision_parameterization="wishart",
            mean_prior=X.mean(0) + shift, covariance_prior=torch.cov(X.T),
        )  # fmt: skip
        fit = AutoCAVI(model, blocks=[("means", "precisions")], tol=1e-10, random_state=0)
        fits.append(fit.fit(X + shift))
    assert fits[1].converged_ and fits[1].n_iter_ <= 2 * fits[0].n_iter_
    assert fits[1].lower_bound_ == pytest.approx(fits[0].lower_bound_, abs=1e-8)


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_a_far_hierarchy_started_at_its_data_is_the_exact_mean_field_optimum():
    # m ~ N(0, 10⁵), θ_g ~ N(m, 1.5), y_gi ~ N(θ_g, 0.8), groups near 10⁴. Started from a
    # prior draw of m 10⁵ sds from the data, mean field is refused as improper after its
    # rounds (README); started with q(m) at the data's mean, it is the exact mean-field
    # optimum of this Gaussian model: log p(y) − ½(Σ log diag Λ − log|Λ|), Λ the joint
    # posterior precision of (m, θ).
    g = torch.Generator().manual_seed(6)
    G, per, sg, s, S0 = 3, 2, 1.5, 0.8, 1e5
    Y = 1e4 + t([[-2.0], [0.5], [3.0]]) + s * torch.randn(G, per, generator=g, dtype=F64)

    def model(Y):
        m = pyro.sample("m", dist.Normal(Y.new_tensor(0.0), S0))
        with pyro.plate("G", G, dim=-2):
            th = pyro.sample("th", dist.Normal(m, sg))
            with pyro.plate("I", per, dim=-1):
                pyro.sample("y", dist.Normal(th, s), obs=Y)

    lam = torch.zeros(G + 1, G + 1, dtype=F64)
    lam[0, 0] = 1 / S0**2 + G / sg**2
    for k in range(1, G + 1):
        lam[k, k] = 1 / sg**2 + per / s**2
        lam[0, k] = lam[k, 0] = -1 / sg**2
    x = torch.linalg.solve(lam, torch.cat([t([0.0]), Y.sum(1) / s**2]))
    joint = float(
        dist.Normal(t(0.0), S0).log_prob(x[0]) + dist.Normal(x[0], sg).log_prob(x[1:]).sum()
        + dist.Normal(x[1:, None], s).log_prob(Y).sum()
    )  # fmt: skip
    evidence = joint - float(0.5 * torch.logdet(lam) - (G + 1) / 2 * math.log(2 * math.pi))
    optimum = evidence - 0.5 * float(lam.diag().log().sum() - torch.logdet(lam))
    fit = AutoCAVI(model, init={"m": dist.Normal(Y.mean(), t(1.0))}, tol=1e-10).fit(Y)
    assert fit.lower_bound_ == pytest.approx(optimum, abs=1e-8)


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_a_mixture_a_million_from_zero_ends_in_the_unshifted_optimum():
    # two clusters 60 apart, 8 points each, component means ~ N(shift, 100²). The first
    # points (at N(0, 1)) gave a q with means thousands away; the next round, drawn around
    # it, stopped after one sweep, and going on from that q (whose responsibilities the
    # imprecise factors had set) ended in another optimum, one component empty: −94.91
    # against −41.36 unshifted, without a warning. A round stopped after its first sweep
    # now starts again from the initial statistics.
    def centred_at(shift):
        def model(x):
            w = pyro.sample("w", dist.Dirichlet(x.new_ones(2)))
            tau = pyro.sample("tau", dist.Gamma(x.new_tensor(2.0), x.new_tensor(2.0)))
            with pyro.plate("k", 2):
                mu = pyro.sample("mu", dist.Normal(x.new_tensor(shift), x.new_tensor(100.0)))
            with pyro.plate("n", x.shape[0]):
                z = pyro.sample("z", dist.Categorical(w))
                pyro.sample("x", dist.Normal(mu[z], tau.rsqrt()), obs=x)

        return model

    g = torch.Generator().manual_seed(12)
    x = torch.cat([c + torch.randn(8, generator=g, dtype=F64) for c in (-30.0, 30.0)])
    bounds = [
        AutoCAVI(centred_at(shift), random_state=1, tol=1e-10).fit(x + shift).lower_bound_
        for shift in (0.0, 1e6)
    ]
    assert bounds[1] == pytest.approx(bounds[0], abs=1e-8)


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_a_normal_gamma_block_with_points_far_wider_than_q_is_probed_again():
    # a regression on an intercept and a regressor near 10⁶, the Normal-Gamma block: q sits
    # inside the first points (w ~ N(0, 1)), but they are far wider than q, where log f is
    # 10⁸; the bound was 0.041 nats above the exact evidence, after a warning, in one
    # round. Rounding that large now probes again around q whatever the amplification.
    g = torch.Generator().manual_seed(1)
    X = torch.stack([torch.ones(30, dtype=F64), 1e6 + torch.randn(30, generator=g, dtype=F64)], -1)
    y = X @ t([3.0, 0.5]) + 0.3 * torch.randn(30, generator=g, dtype=F64)
    exact = BayesianLinearRegression(1.0, 1.0, 1.0).fit(X, y).log_evidence_
    fit = AutoCAVI(BayesianRegression(1.0, 1.0, 1.0), blocks="auto").fit(X, y)
    assert fit.probe_rounds_ > 1
    assert fit.lower_bound_ == pytest.approx(exact, abs=1e-8)


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("blocks", [[("means", "precisions")], ()], ids=["block", "mean-field"])
def test_a_mixture_on_features_in_different_units_is_the_standardized_fit(blocks):
    from models.gmm import GaussianMixtureModel

    # models/gmm.py's mixture (priors from the data, so it transforms with them) on
    # features x·(0.01, 1000) + (0, 5·10⁴): its bound is the standardized fit's less
    # N·log|det| of the map. The precisions are 10¹⁰ apart; Wishart frames scaled by one
    # number put the probes 10¹⁰ times off in one direction (block 1.6e-3 nats off, mean
    # field 5.4, both warned). Frames from the Cholesky factor of E_q[Λ] whiten them.
    g = torch.Generator().manual_seed(1)
    centres = t([[-4.0, 0.0], [4.0, 1.0], [0.0, 5.0]])
    X = torch.cat([c + torch.randn(20, 2, generator=g, dtype=F64) for c in centres])
    scale, shift = t([0.01, 1e3]), t([0.0, 5e4])
    bounds = []
    for data in (X, X * scale + shift):
        model = GaussianMixtureModel.from_data(data, 3, precision_parameterization="wishart")
        bounds.append(AutoCAVI(model, blocks=blocks, tol=1e-10).fit(data).lower_bound_)
    assert bounds[1] == pytest.approx(bounds[0] - len(X) * float(scale.log().sum()), abs=1e-7)


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("blocks", ["auto", ()], ids=["block", "mean-field"])
def test_a_regression_on_an_intercept_and_a_year_fits_its_correlated_posterior(blocks):
    # y on (1, year), year ≈ 2000 ± 1: the weights' posterior correlation is about −0.999999.
    # Probe points drawn with q's marginal scales alone left that ridge, where the
    # likelihood is 10⁶ times its size on it: the mean-field bound came out 1.8e-3 nats
    # above BayesianLinearRegression's, after a warning. Frames that whiten q's covariance
    # reproduce the hand-written class's mean-field fixed point and the exact evidence.
    g = torch.Generator().manual_seed(0)
    year = 2000 + torch.randn(50, generator=g, dtype=F64)
    X = torch.stack([torch.ones(50, dtype=F64), year], -1)
    y = 3.0 + 0.5 * year + torch.randn(50, generator=g, dtype=F64)
    blr = BayesianLinearRegression(2.0, 1.0, 1e-4, tol=1e-10).fit(X, y)
    fit = AutoCAVI(BayesianRegression(2.0, 1.0, 1e-4), blocks=blocks, tol=1e-10).fit(X, y)
    assert fit.converged_
    if blocks == "auto":
        assert fit.lower_bound_ == pytest.approx(blr.log_evidence_, abs=1e-8)
        return
    assert fit.lower_bound_ == pytest.approx(blr.lower_bound_, abs=1e-8)
    q = fit.variational_distributions()["weights"]
    assert relative(q.mean, blr.coef_) < 1e-8
    assert relative(q.covariance_matrix, blr.coef_covariance_) < 1e-6


def two_clusters(means):
    """A 1-D mixture with per-component prior means ``means`` and a shared precision."""

    def model(y):
        weights = pyro.sample("weights", dist.Dirichlet(y.new_ones(2)))
        tau = pyro.sample("tau", dist.Gamma(y.new_tensor(2.0), y.new_tensor(2.0)))
        with pyro.plate("components", 2):
            mu = pyro.sample("mu", dist.Normal(y.new_tensor(means), 10.0))
        with pyro.plate("data", y.shape[0]):
            z = pyro.sample("z", dist.Categorical(weights))
            pyro.sample("y", dist.Normal(mu[z], tau.rsqrt()), obs=y)

    return model


@pytest.mark.filterwarnings("error::RuntimeWarning")  # nor does it warn of rounding
def test_a_mixture_with_one_component_far_away_fits_as_if_it_were_near():
    # one cluster near 0, the other at `far`, each component's prior centred on its cluster:
    # the fit moves with the far cluster. A joint solve of the mixture's design let the rows
    # that read the far component at a near datum (log f ≈ −5·10⁹) round into the near
    # component's coefficients; solved one component at a time, they cannot.
    # The rounding estimate charges each component's rows by E_q[z = k]: charged whole,
    # they made it warn of 0.4 nats at 10⁶ (and of 2.6e-9 at 40: restarted rounds swung
    # the frames between the sweeps' early and converged q until the rounds ran out).
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(12, generator=g, dtype=F64)
    near, far_cluster = noise[:6], noise[6:]
    fits = {}
    for far in (40.0, 1e5, 1e6):
        y = torch.cat([near, far_cluster + far])
        fits[far] = AutoCAVI(two_clusters([0.0, far]), tol=1e-12).fit(y)
        assert fits[far].probe_rounds_ > 1
        assert fits[far].numerical_error_ < 1e-9
    for far in (1e5, 1e6):
        assert abs(fits[far].lower_bound_ - fits[40.0].lower_bound_) < 1e-9
        # q itself within √tol of the fixed point, the bound being stationary there
        tau = [float(fits[f].variational_distributions()["tau"].mean) for f in (40.0, far)]
        assert abs(tau[0] - tau[1]) < 1e-6 * tau[0]


@pytest.mark.parametrize("blocks", [[("means", "precisions")], ()], ids=["block", "mean-field"])
def test_a_normal_wishart_mixture_moves_with_its_data(blocks):
    from models.gmm import GaussianMixtureModel

    # models/gmm.py's mixture on data shifted by 10⁴, its prior centred on the data
    # (from_data): the same fit as unshifted. Before, sweeps on the first, imprecise
    # factors moved the start, and the next round went on from there to another optimum
    # (mean field: −133.50 against −129.27); from_data's float32 prior mean put the block
    # fit 6e-5 nats off. Each round now starts from the same statistics.
    g = torch.Generator().manual_seed(1)
    centres = t([[-4.0, 0.0], [4.0, 1.0], [0.0, 5.0]])
    X = torch.cat([c + torch.randn(8, 2, generator=g, dtype=F64) for c in centres])
    bounds = []
    for shift in (0.0, 1e4):
        model = GaussianMixtureModel.from_data(X + shift, 3, precision_parameterization="wishart")
        fit = AutoCAVI(model, blocks=blocks, tol=1e-10).fit(X + shift)
        bounds.append(fit.lower_bound_)
    assert abs(bounds[1] - bounds[0]) < 1e-7


def test_stopping_at_max_iter_warns_with_scikit_learns_convergence_warning():
    """Crossed intercepts sharing a common level crawl along a ridge: stopped at max_iter,
    the fit says so (tester 12: 1,000 sweeps, 2.3 nats short, no warning), as scikit-learn's
    BayesianGaussianMixture does; a converged fit (c's prior tight: no ridge) does not.
    Plain sweeps (``overrelax=False``): the Newton step on the means would jump the ridge."""
    from sklearn.exceptions import ConvergenceWarning

    g = torch.Generator().manual_seed(20)
    g1, g2 = torch.randint(0, 6, (200,), generator=g), torch.randint(0, 4, (200,), generator=g)
    y = 5 + torch.randn(200, generator=g, dtype=F64)

    def crossed(g1, g2, y, c_scale=10.0):
        with pyro.plate("A", 6):
            a = pyro.sample("a", dist.Normal(t(0.0), t(10.0)))
        with pyro.plate("B", 4):
            c = pyro.sample("c", dist.Normal(t(0.0), t(c_scale)))
        with pyro.plate("data", 200):
            pyro.sample("y", dist.Normal(a[..., g1] + c[..., g2], t(0.5)), obs=y)

    with pytest.warns(ConvergenceWarning, match=r"max_iter=20 sweeps without converging"):
        fit = AutoCAVI(crossed, max_iter=20, overrelax=False).fit(g1, g2, y)
    assert not fit.converged_ and fit.n_iter_ == 20
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        assert AutoCAVI(crossed).fit(g1, g2, y, c_scale=0.1).converged_


def _rats(x, rat, y, centre):
    # growth curves (BUGS "rats", 30 rats x 5 weeks): per-rat intercepts and slopes under
    # Normal-Gamma hyperpriors, the intercepts' prior centred at `centre`
    tau_a = pyro.sample("tau_a", dist.Gamma(t(1.0), t(100.0)))
    tau_b = pyro.sample("tau_b", dist.Gamma(t(1.0), t(1.0)))
    alpha_c = pyro.sample("alpha_c", dist.Normal(t(centre), (1e-2 * tau_a).rsqrt()))
    beta_c = pyro.sample("beta_c", dist.Normal(t(0.0), (1e-2 * tau_b).rsqrt()))
    tau_c = pyro.sample("tau_c", dist.Gamma(t(1.0), t(10.0)))
    with pyro.plate("rats", 30):
        alpha = pyro.sample("alpha", dist.Normal(alpha_c, tau_a.rsqrt()))
        beta = pyro.sample("beta", dist.Normal(beta_c, tau_b.rsqrt()))
    with pyro.plate("obs", len(x)):
        pyro.sample("y", dist.Normal(alpha[..., rat] + beta[..., rat] * x, tau_c.rsqrt()), obs=y)


def test_hierarchical_means_crawling_far_from_the_probe_points_are_probed_again_once_settled():
    # The blocks' means crawl many of their sds a round. Re-probed whenever q got 10³ past
    # the points, the fit took all 10 rounds, warned of 1e-6 nats of rounding, and its bound
    # was 2.7e-8 nats off the same fit with y and the prior shifted by 242 (a change of
    # variables: the same bound). Now q is probed again where it settles.
    g = torch.Generator().manual_seed(3)
    rat = torch.arange(30).repeat_interleave(5)
    x = t([8.0, 15.0, 22.0, 29.0, 36.0]).repeat(30) - 22.0
    a = 242 + 14 * torch.randn(30, generator=g, dtype=F64)
    b = 6.2 + 0.5 * torch.randn(30, generator=g, dtype=F64)
    y = a[rat] + b[rat] * x + 6.0 * torch.randn(150, generator=g, dtype=F64)
    bounds = []
    for shift in (0.0, 242.0):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            fit = AutoCAVI(_rats, blocks="auto", tol=1e-12).fit(x, rat, y - shift, 200.0 - shift)
        assert fit.blocks_ == [("alpha_c", "tau_a"), ("beta_c", "tau_b")]
        assert fit.converged_ and fit.probe_rounds_ < 10
        bounds.append(fit.lower_bound_)
    # float64: the estimated rounding of either bound is 1.4e-8 nats (κ = 100), found 1e-11
    assert abs(bounds[0] - bounds[1]) < 1e-9


def test_one_sweep_is_not_told_it_raised_the_bound_by_nan():
    # tester 38's P3: max_iter=1 warned "the last sweep raised the bound by nan nats"
    from sklearn.exceptions import ConvergenceWarning

    y = t([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    with pytest.warns(ConvergenceWarning, match="before convergence could be seen") as caught:
        AutoCAVI(beta_bernoulli, max_iter=1, overrelax=False).fit(y)
    assert "nan" not in str(caught[0].message)


def test_tol_zero_runs_every_sweep_and_is_not_told_q_is_short_of_a_fixed_point():
    # tester Z's D4: with tol=0 no change is under tol, and a last sweep that changed the
    # bound by 0 was told "q is not a fixed point and the bound is short of it"
    from sklearn.exceptions import ConvergenceWarning

    y = t([0.3, 1.2])

    def model(y):
        mu = pyro.sample("mu", dist.Normal(t(0.0), t(1.0)))
        with pyro.plate("d", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    with pytest.warns(ConvergenceWarning, match="ran all max_iter=50 sweeps, as tol=0 asks"):
        fit = AutoCAVI(model, tol=0.0, max_iter=50).fit(y)
    assert fit.n_iter_ == 50 and fit.lower_bound_ == AutoCAVI(model).fit(y).lower_bound_


def test_a_mixture_s_components_set_by_init_give_the_first_responsibilities():
    """init on a 1-D mixture's means alone: the assignments (drawn, not set) are updated
    before the means, from that start, so the fit follows it: started at the truth and at
    the truth with its labels swapped, the two fits are each other's relabelling, to the
    bound (tester 23: the means' init was overwritten by an update from the drawn
    assignments before any update read it, and every start gave the same fit)."""
    g = torch.Generator().manual_seed(0)
    y = torch.cat(
        [torch.randn(60, generator=g, dtype=F64) - 2, torch.randn(60, generator=g, dtype=F64) + 2]
    )

    def mixture(y):
        with pyro.plate("components", 2):
            mu = pyro.sample("mu", dist.Normal(t(0.0), t(10.0)))
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(torch.ones(2, dtype=F64) / 2))
            pyro.sample("y", dist.Normal(Vindex(mu)[..., z], 1.0), obs=y)

    truth = t([-2.0, 2.0])
    fits = [
        AutoCAVI(mixture, init={"mu": dist.Normal(means, t(0.1))}, tol=1e-12).fit(y)
        for means in (truth, truth.flip(0))
    ]
    located = [fit.variational_distributions()["mu"].loc for fit in fits]
    assert located[0][0] < 0 < located[0][1] and located[1][1] < 0 < located[1][0]
    assert torch.allclose(located[0], located[1].flip(0), atol=1e-8)
    assert fits[0].lower_bound_ == pytest.approx(fits[1].lower_bound_, abs=1e-8)


@pytest.mark.parametrize("given", ["mu", "tau"])
def test_a_mixture_s_means_set_by_init_are_read_before_its_precisions_fit_the_draws(given):
    """Tester BC's F1: a 1-D mixture with latent means and Gamma(10⁻³, 10⁻³) precisions,
    ``init`` at the true means. The precisions (started at their prior) were updated first,
    from the drawn random assignments, and the fit emptied a component (it sat at its
    prior, E[μ] = 0) and merged two clusters at 1.96, 14.7 nats low; given the precisions'
    prior in ``init`` too, the same start fitted. The assignments, which read the means the
    user set, are now updated first: each of the three clusters the data were drawn from
    (30 points each, at -4, 0 and 5) keeps its component, near its centre. Not so for the
    precisions alone, the same for every component (tester BF: the assignments updated
    first read the means at their prior, 0 for all, and made the three components one,
    −305.15 against −264.25): the drawn assignments come first then, as before."""
    torch.manual_seed(2)
    centres = t([-4.0, 0.0, 5.0])
    spreads = [1.0, 0.5, 1.5]
    drawn = [c + s * torch.randn(30, dtype=F64) for c, s in zip(centres, spreads, strict=True)]
    x = torch.cat(drawn)

    def mixture(x):
        w = pyro.sample("w", dist.Dirichlet(torch.ones(3, dtype=F64)))
        with pyro.plate("components", 3):
            mu = pyro.sample("mu", dist.Normal(t(0.0), 1e4))
            tau = pyro.sample("tau", dist.Gamma(t(1e-3), 1e-3))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("x", dist.Normal(Vindex(mu)[..., z], Vindex(tau)[..., z].rsqrt()), obs=x)

    starts = {"mu": dist.Normal(centres, t(0.1)), "tau": dist.Gamma(t([100.0] * 3), 100.0)}
    fit = AutoCAVI(mixture, init={given: starts[given]}).fit(x)
    q = fit.variational_distributions()
    assert fit.converged_
    located = q["mu"].mean.sort().values  # a start of the precisions alone sets no labels
    assert (located - centres).abs().max() < 0.6  # sample means of 30 points, sd ≤ 1.5
    counts = q["z"].probs.sum(0)  # each component's share of the 90 points
    assert counts.min() > 25, counts


def test_a_fit_cut_off_by_max_iter_is_refused_as_cut_off_not_as_settled():
    """Tester BC's F4: ARD matrix factorization stopped by max_iter=1, its rounding warned
    of, was refused as sweeps that "settled where the model's own gradient moves the mean
    of 'u' by 1.61 of q's sds", and said to centre and scale the data: one sweep settles
    nothing, and the full fit is fine. Such a q is still refused (rounding can hold sweeps
    crawling as well as stopped: tester Y's rounds ran out), as cut off, with max_iter to
    raise first."""
    torch.manual_seed(0)
    N, D, K = 20, 8, 2
    U, V = torch.randn(N, K, dtype=F64), torch.randn(D, K, dtype=F64)
    x = 10.0 * (U @ V.T + 0.3 * torch.randn(N, D, dtype=F64))

    def factorization(x):
        tau = pyro.sample("tau", dist.Gamma(t(1e-3), 1e-3))
        alpha = pyro.sample("alpha", dist.Gamma(t(1e-3).expand([K]), 1e-3).to_event(1))
        columns = pyro.plate("columns", D, dim=-1)
        with columns:
            v = pyro.sample("v", dist.Normal(x.new_zeros(K), 1.0).to_event(1))
        with pyro.plate("rows", N, dim=-2):
            u = pyro.sample("u", dist.Normal(x.new_zeros(K), alpha.rsqrt()).to_event(1))
            with columns:
                pyro.sample("x", dist.Normal((u * v).sum(-1), tau.rsqrt()), obs=x)

    with pytest.raises(NotConjugateError) as refused, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        AutoCAVI(factorization, max_iter=1).fit(x)
    said = str(refused.value)
    assert "the sweeps stopped at max_iter=1 without converging" in said
    assert "Raise max_iter" in said and "settled" not in said
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the full fit: converged, nothing to warn of
        assert AutoCAVI(factorization).fit(x).converged_


@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_ard_regression_is_mean_field_vb_written_out(scale):
    """ARD precisions as one vector of independent Gammas, read whole by the weight
    vector's prior: AutoCAVI's fixed point is the written-out VB's (bound to 1e-10, q to
    1e-7), the irrelevant weights' E[α_d] large and the relevant ones' small. With y scaled
    by 10⁴ (E[α_d] of 10⁻⁹ for the relevant weights) the sweeps leave the first probe
    points: a round started again from the start read w's start 10⁵ sds outside the frame
    its factors were solved in, and every round was refused as an improper update (tester
    26's F2); they now go on from the q reached, probed again around it."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(60, 5, generator=g, dtype=F64)
    y = X @ t([2.0, 0.0, -1.0, 0.0, 0.0]) + 0.5 * torch.randn(60, generator=g, dtype=F64)
    y = y * scale
    prior = (1e-2, 1e-2, 1e-2, 1e-2)

    def ard(X, y):
        alpha = pyro.sample("alpha", dist.Gamma(t(prior[0]), t(prior[1])).expand([5]).to_event(1))
        w = pyro.sample("w", dist.Normal(X.new_zeros(5), alpha.rsqrt()).to_event(1))
        tau = pyro.sample("tau", dist.Gamma(t(prior[2]), t(prior[3])))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(X @ w, tau.rsqrt()), obs=y)

    fit = AutoCAVI(ard, tol=1e-12, max_iter=500).fit(X, y)
    bound, alpha, mean, cov = ard_vb(X, y, prior)
    assert fit.converged_
    assert relative(fit.lower_bound_, bound) < 1e-10
    q = fit.variational_distributions()
    # at 10⁴ the pruned coordinates (α_d, w_d) sit where the bound is flat in them (w_d at
    # its prior): a bound converged to 1e-12 leaves them within about 2e-5
    tolerance = 1e-7 if scale == 1 else 1e-4
    assert relative(q["alpha"].mean, alpha) < tolerance
    assert relative(q["w"].mean, mean) < tolerance
    assert relative(q["w"].covariance_matrix, cov) < tolerance
    alpha = alpha * scale**2
    assert bool((alpha[[1, 3, 4]] > 20).all() & (alpha[[0, 2]] < 2).all())


def test_ard_with_both_plated_is_mean_field_vb_written_out():
    """ARD as Pyro users write it, α and w both in a features plate: w's coordinates are
    read whole by every datum, then α's by w's prior once w is a vector. Both are fitted
    as vectors over the plate (plate_events), and the fixed point is the written-out VB's
    (bound to 1e-10, q to 1e-7)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(60, 5, generator=g, dtype=F64)
    y = X @ t([2.0, 0.0, -1.0, 0.0, 0.0]) + 0.5 * torch.randn(60, generator=g, dtype=F64)
    prior = (1e-2, 1e-2, 1e-2, 1e-2)

    def ard(X, y):
        tau = pyro.sample("tau", dist.Gamma(t(prior[2]), t(prior[3])))
        with pyro.plate("features", 5):
            alpha = pyro.sample("alpha", dist.Gamma(t(prior[0]), t(prior[1])))
            w = pyro.sample("w", dist.Normal(t(0.0), alpha.rsqrt()))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(X @ w, tau.rsqrt()), obs=y)

    fit = AutoCAVI(ard, tol=1e-12, max_iter=500).fit(X, y)
    bound, alpha, mean, cov = ard_vb(X, y, prior)
    assert fit.converged_ and fit.plates_as_events_ == {"w": "features", "alpha": "features"}
    assert relative(fit.lower_bound_, bound) < 1e-10
    q = fit.variational_distributions()
    assert relative(q["alpha"].mean, alpha) < 1e-7
    assert relative(q["w"].mean, mean) < 1e-7
    assert relative(q["w"].covariance_matrix, cov) < 1e-7


def test_ard_random_slopes_in_groups_and_features_are_per_group_mean_field_vb():
    """ARD per group as Pyro users write it: α and b in plates groups (dim -2) and features
    (dim -1), τ in groups, y_n reading b[..., group, :] and τ[..., group, 0]. b and α are
    taken as one vector per group over the features (plate_events, the groups plate moving
    to dim -1); the joint density is a product over groups, so the fixed point is the
    written-out ARD VB of each group's data (Bishop & Tipping 2000), bounds summed (1e-10),
    q(b) to 1e-6 and q(α) to 1e-5 of the written-out VB's 2,000 sweeps: near the fixed
    point a pruned coordinate's E[α] (10⁴) still moves by about 1e-7 of itself a sweep
    while the bound moves by less than tol = 1e-12, so the sweep AutoCAVI stops at depends
    on rounding (1e-7 to 3e-7 apart over thread counts)."""
    g = torch.Generator().manual_seed(0)
    G, D, n = 3, 4, 30
    X = torch.randn(G * n, D, generator=g, dtype=F64)
    group = torch.arange(G * n) % G
    W = t([[2.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]])
    y = (X * W[group]).sum(-1) + 0.5 * torch.randn(G * n, generator=g, dtype=F64)
    prior = (1e-2, 1e-2, 1e-2, 1e-2)

    def ard(X, group, y):
        with pyro.plate("groups", G, dim=-2):
            tau = pyro.sample("tau", dist.Gamma(t(prior[2]), t(prior[3])))
            with pyro.plate("features", D, dim=-1):
                alpha = pyro.sample("alpha", dist.Gamma(t(prior[0]), t(prior[1])))
                b = pyro.sample("b", dist.Normal(t(0.0), alpha.rsqrt()))
        with pyro.plate("data", len(y)):
            mean, precision = (X * b[..., group, :]).sum(-1), tau[..., group, 0]
            pyro.sample("y", dist.Normal(mean, precision.rsqrt()), obs=y)

    fit = AutoCAVI(ard, tol=1e-12, max_iter=1000).fit(X, group, y)
    written = [ard_vb(X[group == k], y[group == k], prior) for k in range(G)]
    assert fit.converged_ and fit.plates_as_events_ == {"b": "features", "alpha": "features"}
    assert relative(fit.lower_bound_, sum(w[0] for w in written)) < 1e-10
    q = fit.variational_distributions()
    assert q["b"].batch_shape == (G,) and q["b"].event_shape == (D,)
    assert relative(q["b"].mean, torch.stack([w[2] for w in written])) < 1e-6
    assert relative(q["b"].covariance_matrix, torch.stack([w[3] for w in written])) < 1e-6
    assert relative(q["alpha"].mean, torch.stack([w[1] for w in written])) < 1e-5


def test_probabilistic_pca_in_plates_is_mean_field_vb_at_its_fixed_point():
    """Probabilistic PCA as Pyro users write it in plates (Tipping & Bishop 1999): W in
    plates k (dim -1) and features (dim -2), z in k and data, x_nd ~ N(W_d·z_n, 1/τ). Each
    x reads W_d and z_n whole across k, so both are taken as K-vectors over it
    (plate_events, the features and data plates moving to dim -1). At the fitted q,
    mean-field VB for PCA written out (Bishop 1999, without ARD) gives the bound
    (closed form, to 1e-10: an identity at q) and maps q(W), q(z) and q(τ) to themselves
    (to 1e-6: the sweeps stop where the bound moves by less than tol = 1e-12, and VB-PCA's
    rotations crawl, so q may still move by about 1e-7 of itself a sweep)."""
    g = torch.Generator().manual_seed(0)
    N, D, K = 50, 4, 2
    X = (torch.randn(N, K, generator=g, dtype=F64) @ torch.randn(D, K, generator=g, dtype=F64).T
         + 0.3 * torch.randn(N, D, generator=g, dtype=F64))  # fmt: skip
    a0, b0 = 2.0, 1.0

    def ppca(X):
        tau = pyro.sample("tau", dist.Gamma(t(a0), t(b0)))
        with pyro.plate("k", K, dim=-1):
            with pyro.plate("features", D, dim=-2):
                W = pyro.sample("W", dist.Normal(t(0.0), t(1.0)))
            with pyro.plate("data", N, dim=-2):
                z = pyro.sample("z", dist.Normal(t(0.0), t(1.0)))
        with pyro.plate("rows", N, dim=-2), pyro.plate("columns", D, dim=-1):
            pyro.sample("x", dist.Normal(z @ W.T, tau.rsqrt()), obs=X)

    fit = AutoCAVI(ppca, tol=1e-12, max_iter=5000).fit(X)
    assert fit.converged_ and fit.plates_as_events_ == {"W": "k", "z": "k"}
    q = fit.variational_distributions()
    m, S = q["W"].mean, q["W"].covariance_matrix  # [D, K], [D, K, K]
    mu, Sigma = q["z"].mean, q["z"].covariance_matrix  # [N, K], [N, K, K]
    a, b = q["tau"].concentration, q["tau"].rate
    ww = S + m.unsqueeze(-1) * m.unsqueeze(-2)
    zz = Sigma + mu.unsqueeze(-1) * mu.unsqueeze(-2)
    tau, log_tau = a / b, torch.digamma(a) - b.log()
    squares = X**2 - 2 * X * (mu @ m.T) + torch.einsum("dij,nji->nd", ww, zz)
    log_2pi = math.log(2 * math.pi)
    bound = (N * D / 2 * (log_tau - log_2pi) - tau / 2 * squares.sum()
             - (D + N) * K / 2 * log_2pi - ww.diagonal(dim1=-2, dim2=-1).sum() / 2
             - zz.diagonal(dim1=-2, dim2=-1).sum() / 2
             + a0 * math.log(b0) - math.lgamma(a0) + (a0 - 1) * log_tau - b0 * tau
             + dist.MultivariateNormal(m, S).entropy().sum()
             + dist.MultivariateNormal(mu, Sigma).entropy().sum()
             + dist.Gamma(a, b).entropy())  # fmt: skip
    assert relative(fit.lower_bound_, bound) < 1e-10
    eye = torch.eye(K, dtype=F64)
    S_new = torch.linalg.inv(eye + tau * zz.sum(0))
    m_new = tau * (X.T @ mu) @ S_new
    Sigma_new = torch.linalg.inv(eye + tau * ww.sum(0))
    mu_new = tau * (X @ m) @ Sigma_new
    assert relative(S_new.expand(D, K, K), S) < 1e-6 and relative(m_new, m) < 1e-6
    assert relative(Sigma_new.expand(N, K, K), Sigma) < 1e-6 and relative(mu_new, mu) < 1e-6
    assert relative(b0 + squares.sum() / 2, b) < 1e-6
    assert relative(t(a0 + N * D / 2), a) < 1e-12


def test_factor_analysis_with_a_vague_latent_mean_reaches_the_optimum_not_the_saddle():
    """Tester BA's F1: factor analysis x_nd ~ N(m_d + z_n·W_d, 1/τ) with a latent mean
    m_d ~ N(0, 10⁸) and noise precision τ. The first sweep updated τ first, reading m at its
    prior (E[m²] = 10⁸): E[τ] = 10⁻⁸, W and z collapsed to 10⁻¹⁴ given it, and the sweeps
    stopped, converged, at the saddle W = z = 0 (E[τ] = 0.46, 54.6 nats low; every n_init
    start the same). Expected here: mean-field VB written out (Bishop 1999's updates with a
    mean), from a start off the saddle, 4,000 sweeps; AutoCAVI's bound equals the
    written-out bound at its fixed point to 1e-8 (identities at a common optimum; the two
    stop at different points of a ridge of rotations, but the bound and E[τ] are
    rotation-invariant)."""
    torch.manual_seed(0)
    N, D, K, s2 = 30, 4, 2, 1e8
    Wt = torch.randn(D, K, dtype=F64)
    X = torch.randn(N, K, dtype=F64) @ Wt.T + 0.3 * torch.randn(N, D, dtype=F64)

    def factor_analysis(X):
        features = pyro.plate("features", D, dim=-1)
        tau = pyro.sample("tau", dist.Gamma(t(1.0), t(1.0)))
        with features:
            W = pyro.sample("W", dist.Normal(X.new_zeros(K), 1.0).to_event(1))
            m = pyro.sample("m", dist.Normal(t(0.0), math.sqrt(s2)))
        with pyro.plate("data", N, dim=-2):
            z = pyro.sample("z", dist.Normal(X.new_zeros(1, K), 1.0).to_event(1))
            with features:
                pyro.sample("x", dist.Normal(m + (z * W).sum(-1), tau.rsqrt()), obs=X)

    def bound_and_update(q):  # the bound at q, and q's sweep: W, z, m, τ in turn
        (m_w, S_w), (m_z, S_z), (m_m, v_m), (a, b) = q
        ww, zz = (
            S_w + m_w.unsqueeze(-1) * m_w.unsqueeze(-2),
            S_z + m_z.unsqueeze(-1) * m_z.unsqueeze(-2),
        )
        tau, log_tau = a / b, torch.digamma(a) - b.log()
        fitted = m_m + m_z @ m_w.T  # [N, D]
        squares = ((X - fitted) ** 2 + v_m + torch.einsum("dij,nji->nd", ww, zz)
                   - (m_z @ m_w.T) ** 2)  # fmt: skip
        log_2pi = math.log(2 * math.pi)
        bound = (N * D / 2 * (log_tau - log_2pi) - tau / 2 * squares.sum()
                 - (D + N) * K / 2 * log_2pi - ww.diagonal(dim1=-2, dim2=-1).sum() / 2
                 - zz.diagonal(dim1=-2, dim2=-1).sum() / 2
                 - D / 2 * math.log(2 * math.pi * s2) - (m_m**2 + v_m).sum() / (2 * s2)
                 - tau  # E log Gamma(τ; 1, 1)
                 + dist.MultivariateNormal(m_w, S_w).entropy().sum()
                 + dist.MultivariateNormal(m_z, S_z).entropy().sum()
                 + dist.Normal(m_m, v_m.sqrt()).entropy().sum()
                 + dist.Gamma(a, b).entropy())  # fmt: skip
        eye = torch.eye(K, dtype=F64)
        S_w = torch.linalg.inv(eye + tau * zz.sum(0)).expand(D, K, K)
        m_w = tau * ((X - m_m).T @ m_z) @ S_w[0]
        ww = S_w + m_w.unsqueeze(-1) * m_w.unsqueeze(-2)
        S_z = torch.linalg.inv(eye + tau * ww.sum(0)).expand(N, K, K)
        m_z = tau * ((X - m_m) @ m_w) @ S_z[0]
        zz = S_z + m_z.unsqueeze(-1) * m_z.unsqueeze(-2)
        v_m = 1 / (1 / s2 + N * tau) * torch.ones(D, dtype=F64)
        m_m = v_m * tau * (X - m_z @ m_w.T).sum(0)
        squares = ((X - m_m - m_z @ m_w.T) ** 2 + v_m + torch.einsum("dij,nji->nd", ww, zz)
                   - (m_z @ m_w.T) ** 2)  # fmt: skip
        a, b = t(1.0 + N * D / 2), 1.0 + squares.sum() / 2
        return bound, ((m_w, S_w), (m_z, S_z), (m_m, v_m), (a, b))

    g = torch.Generator().manual_seed(1)
    eye = torch.eye(K, dtype=F64)
    q = ((torch.randn(D, K, generator=g, dtype=F64), eye.expand(D, K, K)),
         (torch.randn(N, K, generator=g, dtype=F64), eye.expand(N, K, K)),
         (X.mean(0), torch.ones(D, dtype=F64)), (t(1.0), t(1.0)))  # fmt: skip
    for _ in range(4000):
        written_out, q = bound_and_update(q)
    fit = AutoCAVI(factor_analysis).fit(X)
    assert fit.converged_
    assert relative(fit.lower_bound_, written_out) < 1e-8, (fit.lower_bound_, written_out)
    # E[τ] less closely: the sweeps stop where the bound moves by less than tol = 1e-8, and
    # the bound is flat to second order in q, so q stops about 1e-5 of itself away (2.4e-5
    # at 1 thread, 3.6e-6 at 2); at the saddle E[τ] was 0.46 against 7.83
    assert relative(fit.variational_distributions()["tau"].mean, q[3][0] / q[3][1]) < 1e-3


def test_ppca_with_z_in_the_rows_plate_of_x_is_refused_naming_why():
    """Tester AT's F4: PPCA with z in the rows plate that x is declared in. Taking z as a
    K-vector moves that plate, so x follows into an event over its columns, and then reads
    W whole across the features: refused. The message said to put the plate read whole at
    dim -1, which it is; it now says that x followed z and that z in a plate of its own
    keeps x as declared, and so declared the model fits."""
    g = torch.Generator().manual_seed(20)
    x = torch.randn(10, 4, generator=g, dtype=F64)

    def ppca(x, own_plate=False):
        rows, k = pyro.plate("rows", 10, dim=-2), pyro.plate("k", 2, dim=-1)
        with pyro.plate("features", 4, dim=-2), k:
            W = pyro.sample("W", dist.Normal(t(0.0), t(1.0)))
        with pyro.plate("data", 10, dim=-2) if own_plate else rows, k:
            z = pyro.sample("z", dist.Normal(t(0.0), t(1.0)))
        with rows, pyro.plate("columns", 4, dim=-1):
            pyro.sample("x", dist.Normal(z @ W.T, t(0.5)), obs=x)

    refusal = r"'x' was itself taken into its event over plate 'columns'.*a plate of its own"
    with pytest.raises(NotConjugateError, match=refusal):
        AutoCAVI(ppca).fit(x)
    assert AutoCAVI(ppca).fit(x, own_plate=True).plates_as_events_ == {"W": "k", "z": "k"}


def test_a_mixture_of_regressions_in_plates_is_cavi_written_out_at_its_fixed_point():
    """A mixture of linear regressions as Pyro users write it: weights w in plates
    components (dim -2) and features (dim -1), each y_n reading its component's row whole,
    (X * Vindex(w)[..., z, :]).sum(-1). w is taken as one D-vector per component
    (plate_events), a mixture's component. At the fitted q, CAVI written out (Bishop 2006,
    §10.2 with a regression in each component) gives the bound (closed form, to 1e-10)
    and maps q(z) to itself (to 1e-8) and q(π) and q(w) to themselves to 1e-6: the sweep
    updated them from the responsibilities before its last update of q(z), which moved
    them by 1e-9 to 4e-8 of the weights' covariance (it stopped at tol = 1e-12)."""
    g = torch.Generator().manual_seed(0)
    N, D, K, sigma, s0 = 120, 2, 2, 0.3, 2.0
    X = torch.randn(N, D, generator=g, dtype=F64)
    truth = t([[3.0, -2.0], [-3.0, 2.0]])
    y = (X * truth[torch.arange(N) % K]).sum(-1) + sigma * torch.randn(N, generator=g, dtype=F64)

    def mixture(X, y):
        pi = pyro.sample("pi", dist.Dirichlet(torch.ones(K, dtype=F64)))
        with pyro.plate("features", D, dim=-1), pyro.plate("components", K, dim=-2):
            w = pyro.sample("w", dist.Normal(t(0.0), t(s0)))
        with pyro.plate("data", N):
            z = pyro.sample("z", dist.Categorical(pi))
            mean = (X * Vindex(w)[..., z, :]).sum(-1)
            pyro.sample("y", dist.Normal(mean, t(sigma)), obs=y)

    fit = AutoCAVI(mixture, tol=1e-12, max_iter=500).fit(X, y)
    assert fit.converged_ and fit.plates_as_events_ == {"w": "features"}
    q = fit.variational_distributions()
    alpha, r = q["pi"].concentration, q["z"].probs  # [K], [N, K]
    m, S = q["w"].mean, q["w"].covariance_matrix  # [K, D], [K, D, D]
    log_pi = torch.digamma(alpha) - torch.digamma(alpha.sum())
    ww = S + m.unsqueeze(-1) * m.unsqueeze(-2)
    quadratic = torch.einsum("nd,kde,ne->nk", X, ww, X)
    log_lik = (-0.5 * math.log(2 * math.pi * sigma**2)
               - (y.unsqueeze(-1) ** 2 - 2 * y.unsqueeze(-1) * (X @ m.T) + quadratic)
               / (2 * sigma**2))  # fmt: skip
    log_prior_w = -D / 2 * math.log(2 * math.pi * s0**2) - ww.diagonal(dim1=-2, dim2=-1).sum(-1) / (
        2 * s0**2
    )
    bound = (math.lgamma(K)  # E log Dirichlet(π; 1): its density is (K − 1)! everywhere
             + (r * (log_pi + log_lik)).sum() + log_prior_w.sum()
             + dist.Dirichlet(alpha).entropy()
             + dist.MultivariateNormal(m, S).entropy().sum()
             - (r * r.clamp_min(1e-300).log()).sum())  # fmt: skip
    assert relative(fit.lower_bound_, bound) < 1e-10
    r_new = torch.softmax(log_pi + log_lik, -1)
    S_new = torch.linalg.inv(
        torch.eye(D, dtype=F64) / s0**2
        + torch.einsum("nk,nd,ne->kde", r, X, X) / sigma**2
    )  # fmt: skip
    m_new = torch.einsum("kde,ke->kd", S_new, (r * y.unsqueeze(-1)).T @ X / sigma**2)
    assert relative(r_new, r) < 1e-8 and relative(1.0 + r.sum(0), alpha) < 1e-6
    assert relative(S_new, S) < 1e-6 and relative(m_new, m) < 1e-6


def test_ard_over_too_many_coordinates_is_sent_to_svi_by_name_before_probing():
    """D = 61: the weight prior's (2D + 1)(1 + D + D(D + 1)/2) = 240,219 coefficients take a
    grid of (1,953 + 244)(123 + 15) = 303,186 points, beyond kronecker_probe.MAX_POINTS;
    the refusal names alpha for svi_sites (tester 26's F3: the generic advice, a plate, is
    refused in turn and sent back to the vector), before any probe run."""
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(40, 61, generator=g, dtype=F64), torch.randn(40, generator=g, dtype=F64)

    shapes = []

    def ard(X, y):
        alpha = pyro.sample("alpha", dist.Gamma(t(1.0), t(1.0)).expand([61]).to_event(1))
        w = pyro.sample("w", dist.Normal(X.new_zeros(61), alpha.rsqrt()).to_event(1))
        shapes.append(tuple(w.shape))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(X @ w, 1.0), obs=y)

    with pytest.raises(NotConjugateError) as e:
        AutoCAVI(ard).fit(X, y)
    message = str(e.value)
    assert re.search(r"240,219 coefficients.*303,186 grid points.*svi_sites=\['alpha'\]", message)
    assert shapes and set(shapes) == {(61,)}  # plain runs only: no batch of probe points


def test_a_first_sweep_far_off_is_mended_from_the_priors_not_resumed():
    """Data at 10⁶ ± 10⁻⁶: the first probe's factors put q(μ) 10⁸ sds off after one
    sweep, and the next round's update from the start is improper. Resumed from that q
    (tester 27's F1, a fallback tried first) every later round probed around it and the
    bound was 1.75e17 nats low with converged_ True; started again around the priors, as
    the rounds do first, it is the exact log evidence (the data's Normal marginal)."""
    g = torch.Generator().manual_seed(0)
    y = 1e6 + 1e-6 * (1.5 + torch.randn(20, generator=g, dtype=F64))

    def model(y):
        mu = pyro.sample("mu", dist.Normal(y.new_tensor(1e6), 3e-6))
        with pyro.plate("n", len(y)):
            pyro.sample("y", dist.Normal(mu, 0.7e-6), obs=y)

    cov = 9e-12 * torch.ones(20, 20, dtype=F64) + 0.49e-12 * torch.eye(20, dtype=F64)
    exact = float(dist.MultivariateNormal(torch.full((20,), 1e6, dtype=F64), cov).log_prob(y))
    fit = AutoCAVI(model).fit(y)
    assert abs(fit.lower_bound_ - exact) < 1e-9 * abs(exact)


def _far_data(seed, groups=5, points=8):
    g = torch.Generator().manual_seed(seed)
    y = 1e6 + torch.randn(groups, generator=g, dtype=F64)
    return y + torch.randn(points, groups, generator=g, dtype=F64)


def _far_model(v, detach=False):
    def model(y):
        mu = pyro.sample("mu", dist.Normal(t(0.0), t(v**0.5)))
        with pyro.plate("groups", y.shape[1], dim=-1):
            a = pyro.sample("a", dist.Normal(mu, t(1.0)))
            with pyro.plate("points", y.shape[0], dim=-2):
                pyro.sample("y", dist.Normal(a.detach() if detach else a, t(1.0)), obs=y)

    return model


def _far_optimum(y, v):
    """Mean field's optimum of the hierarchical model, written out: the evidence (the a's
    integrated, μ by its conjugate posterior) less KL = ½(Σ log diag Λ − log|Λ|), Λ the
    posterior precision of (μ, a)."""
    N, G = y.shape
    # y | μ ~ N(μ1, S), S = I + kron(11ᵀ, I_G); log p(y) = log p(y | m) + log p(m) − log p(m | y)
    S = torch.eye(N * G, dtype=F64) + torch.kron(
        torch.ones(N, N, dtype=F64), torch.eye(G, dtype=F64)
    )
    ones = torch.ones(N * G, dtype=F64)
    precision = 1 / v + ones @ torch.linalg.solve(S, ones)
    m = torch.linalg.solve(S, ones) @ y.reshape(-1) / precision
    evidence = float(
        dist.MultivariateNormal(m * ones, S).log_prob(y.reshape(-1))
        + dist.Normal(t(0.0), t(v**0.5)).log_prob(m) - 0.5 * torch.log(precision / (2 * math.pi))
    )  # fmt: skip
    lam = torch.eye(G + 1, dtype=F64) * (1 + N)
    lam[0, 0] = 1 / v + G
    lam[0, 1:] = lam[1:, 0] = -1.0
    return evidence, evidence - 0.5 * float(lam.diag().log().sum() - torch.logdet(lam))


def test_data_far_from_zero_is_refused_or_fitted_to_within_its_warned_rounding():
    """Tester Y: μ ~ N(0, 10¹⁴), a_g ~ N(μ, 1), y_ng ~ N(a_g, 1), data near 10⁶. The
    rounds ran out with q(μ) at 1.8e4 (its sd 8e-5), 8.7e5 below the data, and the bound
    −2.1e12 nats was reported converged_ with a warning of 3.6e9 nats of rounding: a fixed
    point of probed factors wrong where q is. Which way float64 rounding takes a fit here
    depends on the machine's arithmetic (its BLAS's kernels: a seed refused by the model's
    own gradient on one CPU is refused as an improper update, or at the check at q, on
    another), so every data set and seed is held to the contract itself: refused, or a
    bound within the rounding it warns of of mean field's optimum, written out
    (:func:`_far_optimum`; the evidence matches mpmath's at 60 digits to 1e-10)."""
    v = 1e14
    evidence, _ = _far_optimum(_far_data(0), v)
    assert evidence == pytest.approx(-82.6863597871, abs=1e-9)  # mpmath, 60 digits
    outcomes = []
    for data_seed, seed in itertools.product((0, 1, 2), (1, 2, 3)):
        y = _far_data(data_seed)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fit = AutoCAVI(_far_model(v), random_state=seed).fit(y)
        except NotConjugateError as error:
            outcomes.append(str(error)[:40])
            continue
        _, optimum = _far_optimum(y, v)
        assert any("float64 rounding in the factors" in str(w.message) for w in caught)
        assert fit.converged_, (data_seed, seed)
        assert abs(fit.lower_bound_ - optimum) <= fit.numerical_error_ + 1e-9, (data_seed, seed)
        outcomes.append("fitted")
    assert "fitted" in outcomes  # not a contract met by refusing everything


def _shifted_fit(model, y, shift):
    """A fit of the well-scaled ``model`` with q(μ) moved ``shift`` of the exact
    posterior's sds: a fixed point of wrong factors, made on purpose."""
    fit = AutoCAVI(model).fit(y)
    q = fit._q["mu"]
    fit._q = {**fit._q, "mu": dist.Normal(q.loc + shift * q.scale, q.scale)}
    return fit


def test_a_q_the_models_own_gradient_moves_is_refused_by_name_with_the_way_out():
    """The refusal that tester Y's fit now meets where the model's own gradient tells:
    q(μ) moved 40 sds off mean field's optimum of a well-scaled hierarchical model. The
    gradient's step is P(m − μ) in q's sds, 40 ± 5/√DRAWS (see test_stationarity)."""
    y = _far_data(0) - 1e6
    fit = _shifted_fit(_far_model(100.0), y, 40.0)
    with pytest.raises(NotConjugateError, match="model's own gradient moves the mean") as e:
        fit._refuse_unstationary((y,), {}, [fit.lower_bound_])
    step = float(re.search(r"latent site 'mu' by ([0-9.e+]+) of q's sds", str(e.value))[1])
    assert abs(step - 40.0) < 5 / math.sqrt(16)
    assert "Centre and scale the data" in str(e.value)
    assert _shifted_fit(_far_model(100.0), y, 0.0)._refuse_unstationary((y,), {}, [0.0]) == {}
    # wrong factors can leave q's variance wrong too: q(μ) 10⁶ times too narrow asks for a
    # step of 40·10⁻⁶ of its own sds (a mean 1.5·10⁶ off at data near 10⁶ passed so, its
    # bound 6.8e12 nats short of mean field's optimum); in the sds of the model's own
    # curvature along the gradient, G + 1/v (q(μ)'s precision at the optimum), it is 40
    narrow = _shifted_fit(_far_model(100.0), y, 40.0)
    q = narrow._q["mu"]
    narrow._q = {**narrow._q, "mu": dist.Normal(q.loc, q.scale * 1e-6)}
    with pytest.raises(NotConjugateError, match="model's own gradient moves the mean") as e:
        narrow._refuse_unstationary((y,), {}, [narrow.lower_bound_])
    found = re.search(r"'mu' by ([0-9.e+-]+) of q's sds and ([0-9.e+]+) sds of the model's",
                      str(e.value))  # fmt: skip
    assert float(found[1]) < 1e-4 and abs(float(found[2]) - 40.0) < 5 / math.sqrt(16)


def test_a_unit_whose_factor_has_no_autograd_graph_is_named_and_the_rest_still_checked():
    # tester AB: one factor without an autograd graph (a detached likelihood) had switched
    # the whole check off; now only its unit goes unchecked, and the warning names it
    y = _far_data(0) - 1e6
    detached = _far_model(100.0, detach=True)
    assert _shifted_fit(detached, y, 0.0)._refuse_unstationary((y,), {}, [0.0]) == {"a": "y"}
    with pytest.raises(NotConjugateError, match="site 'mu' by"):  # μ's factors have graphs
        _shifted_fit(detached, y, 40.0)._refuse_unstationary((y,), {}, [0.0])
    with pytest.warns(RuntimeWarning, match=r"could not check q's means of 'a' \(its factor 'y'"):
        warn_imprecise(0.01, -82.7, 19, {"a": "y"})


def test_a_model_that_raises_where_q_is_checked_is_refused_by_name_not_by_its_raw_error():
    """The model raises at points drawn from q(α) (here by design, below 0.05: q's shape,
    0.6, piles its mass up near 0; tester 28's F2 had a MultivariateNormal whose precision
    Mᵀ diag(α) M turned singular, its Cholesky failing): a NotConjugateError says the fit
    cannot be verified there and names the model's error, instead of the raw error
    escaping from a verification run (seed 7: its first run and probes stay above 0.05)."""

    def model(y):
        alpha = pyro.sample("alpha", dist.Gamma(t(0.1), t(0.1)))
        if bool((alpha < 0.05).any()):
            raise RuntimeError("alpha below 0.05")
        with pyro.plate("data", 1):
            pyro.sample("y", dist.Normal(0.0, alpha.rsqrt().unsqueeze(-1)), obs=y)

    with pytest.raises(NotConjugateError) as e:
        AutoCAVI(model, random_state=7).fit(t([0.3]))
    message = str(e.value)
    assert "raised RuntimeError (alpha below 0.05) at points drawn from the fitted q" in message
    assert "cannot be verified" in message
    assert isinstance(e.value.__cause__, RuntimeError)


def test_a_ridge_of_tightly_linked_means_reaches_the_written_out_fixed_point():
    """Tester S's F4: on this ridge the sweeps gained 8.6e-9 nats a sweep, and at
    max_iter=200 the fit stopped 4.3e-5 nats below the fixed point, reported converged_
    (the over-relaxed step was skipped on the last sweep; it is taken there now). The
    Newton step on the means (:mod:`pyro_vae.cavi.newton_means`) now crosses the ridge in a
    few sweeps, to the fixed point written out here: given E[τ] the means solve a 2x2
    linear system, and E[τ] is iterated to its own fixed point. Cut off before it gets
    there, the fit is not reported converged."""
    from sklearn.exceptions import ConvergenceWarning

    sd, n = 1e-2, 20
    y = 100 + torch.randn(n, generator=torch.Generator().manual_seed(20), dtype=F64)

    def model(y):
        tau = pyro.sample("tau", dist.Gamma(t(2.0), 2.0))
        th0 = pyro.sample("th0", dist.Normal(t(0.0), 1.0))
        th1 = pyro.sample("th1", dist.Normal(th0, sd))
        with pyro.plate("N", n):
            pyro.sample("y", dist.Normal(th1, tau.rsqrt()), obs=y)

    tau_mean = 1.0
    for _ in range(200):  # mean field's fixed point, q(θ0) q(θ1) q(τ)
        p0, p1 = 1 + sd**-2, sd**-2 + n * tau_mean
        system = torch.tensor([[p0, -(sd**-2)], [-(sd**-2), p1]], dtype=F64)
        m0, m1 = torch.linalg.solve(system, torch.tensor([0.0, tau_mean * y.sum()], dtype=F64))
        a, b = 2 + n / 2, 2 + 0.5 * (((y - m1) ** 2).sum() + n / p1)
        tau_mean = float(a / b)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        fit = AutoCAVI(model, max_iter=200).fit(y)
    q = fit.variational_distributions()
    assert fit.converged_ and fit.n_iter_ <= 10
    # within tol (1e-8 nats) the bound is flat to 1e-5 of θ's means here: a fit to tol=1e-12
    # puts θ1's mean 2e-8 from m1
    assert abs(float(q["th1"].loc) - float(m1)) < 1e-5
    assert abs(float(q["th0"].loc) - float(m0)) < 1e-5
    assert abs(float(q["tau"].mean) - tau_mean) < 1e-6 * tau_mean
    with pytest.warns(ConvergenceWarning, match="max_iter=2 sweeps"):
        cut = AutoCAVI(model, max_iter=2).fit(y)
    assert not cut.converged_ and cut.n_iter_ == 2


def test_a_tight_link_refused_says_so_and_its_advice_fits_the_exact_evidence():
    """Tester S's F2: θ₁ ~ N(θ₀, 10⁻⁴) under data of order one was refused as a clamp or
    a torch.where, which the model does not have. The refusal names tightly linked latents
    too (tighter links still meet it), and its advice (one vector site) gives the exact log
    evidence, y ~ N(0, I + (1 + 10⁻⁸) 11ᵀ)."""
    y = t([0.7, 1.1, 0.2, 0.9, 0.5])

    def two_level(y):
        th0 = pyro.sample("th0", dist.Normal(t(0.0), 1.0))
        th1 = pyro.sample("th1", dist.Normal(th0, 1e-4))
        with pyro.plate("N", len(y)):
            pyro.sample("y", dist.Normal(th1, 1.0), obs=y)

    # since the Newton step on the means (taken on factors that passed their precision
    # check), this fits: mean field's optimum, written out (P m = h, q_i = N(m_i, 1/P_ii))
    precision = torch.tensor([[1 + 1e8, -1e8], [-1e8, 1e8 + len(y)]], dtype=F64)
    m = torch.linalg.solve(precision, torch.stack([t(0.0), y.sum()]))
    v = 1 / precision.diagonal()
    c = -0.5 * math.log(2 * math.pi)
    optimum = (
        c - 0.5 * (m[0] ** 2 + v[0])
        + c - 0.5 * math.log(1e-8) - 0.5 * ((m[1] - m[0]) ** 2 + v[0] + v[1]) / 1e-8
        + (c - 0.5 * ((y - m[1]) ** 2 + v[1])).sum()
        + 0.5 * torch.log(2 * math.pi * math.e * v).sum()
    )  # fmt: skip
    assert AutoCAVI(two_level).fit(y).lower_bound_ == pytest.approx(float(optimum), abs=1e-9)

    def as_one_vector(y):
        cov = t([[1.0, 1.0], [1.0, 1.0 + 1e-8]])
        th = pyro.sample("th", dist.MultivariateNormal(t([0.0, 0.0]), cov))
        with pyro.plate("N", len(y)):
            pyro.sample("y", dist.Normal(th[..., 1:2], 1.0), obs=y)

    n = len(y)
    covariance = torch.eye(n, dtype=F64) + (1 + 1e-8) * torch.ones(n, n, dtype=F64)
    marginal = dist.MultivariateNormal(torch.zeros(n, dtype=F64), covariance)
    fit = AutoCAVI(as_one_vector).fit(y)
    assert fit.lower_bound_ == pytest.approx(float(marginal.log_prob(y)), abs=1e-7)


def test_the_returned_q_is_a_copy_that_an_edit_leaves_the_fit_unchanged(regression_data):
    """Tester DL: an in-place edit of ``variational_distributions()["mu"].loc`` moved the
    fit's own q, so its guide drew from the edited q while ``lower_bound_`` described the
    old one. Every estimator that offers the method now returns copies."""
    from pyro_vae.cavi import BayesianGaussianMixture

    X, y = regression_data
    gmm_data = torch.randn(30, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    fits = [
        AutoCAVI(BayesianRegression()).fit(X, y),
        BayesianLinearRegression().fit(X, y),
        BayesianGaussianMixture(2, random_state=0).fit(gmm_data),
    ]
    for fit in fits:
        means = {name: q.mean.clone() for name, q in fit.variational_distributions().items()}
        for q in fit.variational_distributions().values():
            for value in vars(q).values():
                if torch.is_tensor(value) and value.is_floating_point():
                    value.add_(1.0)  # every parameter the distribution holds, edited
        after = fit.variational_distributions()
        for name, mean in means.items():
            assert torch.equal(after[name].mean, mean), (type(fit).__name__, name)


def test_every_cavi_estimator_takes_scikit_learn_s_clone_get_params_and_set_params(
    regression_data,
):
    """Tester DL: ``sklearn.base.clone(AutoCAVI(...))`` failed (no ``get_params``); the
    estimators follow scikit-learn's conventions, so they are its ``BaseEstimator``s. A clone
    has the same settings, is not fitted, and fits to the same bound."""
    from sklearn.base import clone

    from pyro_vae.cavi import BayesianGaussianMixture, IsingMeanField, StructuredMeanField
    from pyro_vae.cavi.hmm import FactorialHMM

    X, y = regression_data
    auto = AutoCAVI(BayesianRegression(), tol=1e-10)
    for estimator in (
        auto, BayesianLinearRegression(a0=2.0), BayesianGaussianMixture(2, random_state=0),
        IsingMeanField(beta=0.5), StructuredMeanField(FactorialHMM(*_tiny_fhmm()), n_init=2),
    ):  # fmt: skip
        twin = clone(estimator)
        assert twin is not estimator and twin.get_params().keys() == estimator.get_params().keys()
        assert type(twin).__name__ in repr(twin)
    assert clone(auto).set_params(tol=1e-6).tol == 1e-6
    fitted = clone(auto).fit(X, y)
    assert not hasattr(clone(fitted), "lower_bound_")
    assert clone(fitted).fit(X, y).lower_bound_ == fitted.lower_bound_


def _tiny_fhmm():
    """(log π, log A, W, C) of a factorial HMM: 2 chains of 2 states, 1-D outputs."""
    log_pi = torch.full((2, 2), 0.5, dtype=F64).log()
    log_a = torch.tensor([[0.9, 0.1], [0.2, 0.8]], dtype=F64).log().expand(2, 2, 2)
    return log_pi, log_a, torch.ones(2, 1, 2, dtype=F64), torch.eye(1, dtype=F64)
