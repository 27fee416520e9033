"""Adaptive over-relaxed steps between AutoCAVI's sweeps: the proposal itself, and a fit of
crossed random effects against the mean-field optimum in closed form."""

import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from pyro_vae.cavi import AutoCAVI
from pyro_vae.cavi.exponential_families import GammaFamily, NormalFamily
from pyro_vae.cavi.latent_units import Latent
from pyro_vae.cavi.overrelaxation import (
    FIRST_RATE,
    MAX_RATE,
    crawling,
    next_rate,
    overrelaxed_q,
)
from tests.pyro_vae.cavi.float64 import F64, t


def latent(name, family):
    return Latent(name, family, torch.Size([2]), frozenset({"p"}), None, (name,))


def test_a_rate_of_one_is_the_sweeps_own_q_and_two_extrapolates_linearly():
    normal = NormalFamily("x", torch.Size())
    latents = {"x": latent("x", normal)}
    before = {"x": t([[1.0, -0.5], [0.0, -1.0]])}  # η = (m/v, −1/(2v)): N(2, 1), N(0, 0.5)
    after = {"x": t([[2.0, -1.0], [1.0, -1.0]])}
    q1 = overrelaxed_q(before, after, latents, {}, 1.0)["x"]
    expected = normal.distribution(after["x"])
    assert torch.allclose(q1.loc, expected.loc) and torch.allclose(q1.scale, expected.scale)
    q2 = overrelaxed_q(before, after, latents, {}, 2.0)["x"]
    eta = t([[3.0, -1.5], [2.0, -1.0]])  # before + 2 (after − before)
    assert torch.allclose(q2.loc, -eta[:, 0] / (2 * eta[:, 1]))
    assert torch.allclose(q2.scale, (-1 / (2 * eta[:, 1])).sqrt())


def test_a_proposal_outside_the_natural_parameter_space_is_declined():
    """A Gamma's rate −η₀ extrapolated below zero is no distribution: None, not an error."""
    latents = {"tau": latent("tau", GammaFamily("tau", torch.Size()))}
    before = {"tau": t([[-3.0, 1.0], [-3.0, 1.0]])}  # Gamma(2, 3)
    after = {"tau": t([[-1.0, 1.0], [-1.0, 1.0]])}  # Gamma(2, 1): rate falls by 2 a sweep
    assert overrelaxed_q(before, after, latents, {}, 1.0) is not None
    assert overrelaxed_q(before, after, latents, {}, 2.0) is None  # rate 3 − 2·2 = −1


def test_the_rate_doubles_while_kept_up_to_its_cap_and_halves_when_declined():
    rates = [FIRST_RATE]
    for kept in [True] * 20 + [False] * 20:
        rates.append(next_rate(rates[-1], kept))
    assert rates[:6] == [2, 4, 8, 16, 32, 64] and rates[20] == MAX_RATE == 2.0**16
    assert rates[21:24] == [2.0**15, 2.0**14, 2.0**13] and rates[-1] == FIRST_RATE


def test_sweeps_whose_gains_shrink_fast_are_not_crawling():
    """The regression's gains (1.46, 7e-4, 1.6e-7 nats) fall 2,000-fold a sweep: no longer
    step is tried after them; crossed effects' fall by a percent: they crawl."""
    inf = float("inf")
    assert crawling([inf]) and crawling([inf, 1.46])
    assert not crawling([inf, 1.46, 7e-4]) and not crawling([inf, 1.46, 7e-4, 1.6e-7])
    assert crawling([inf, 0.02, 0.0198]) and crawling([inf, 0.02, 0.01])


N, S, I = 300, 15, 12  # noqa: E741


@pytest.fixture(scope="module")
def crossed():
    """Crossed random effects y = μ + a[subject] + b[item] + ε, σ = 0.5 known; their
    exact posterior N(m, Λ⁻¹) (one-hot design Z), and the mean-field optimum's bound in
    closed form: for q = Π N(m_i, 1/Λ_ii), KL(q ‖ p(·|y)) = ½(Σ log Λ_ii − log|Λ|), so
    ELBO* = log p(y) − ½(Σ log Λ_ii − log|Λ|)."""
    g = torch.Generator().manual_seed(0)
    subject, item = torch.randint(0, S, (N,), generator=g), torch.randint(0, I, (N,), generator=g)
    y = 3.0 + torch.randn(S, generator=g, dtype=F64)[subject]
    y = y + 0.7 * torch.randn(I, generator=g, dtype=F64)[item] + 0.5 * torch.randn(N, dtype=F64)

    def model(subject, item, y):
        mu = pyro.sample("mu", dist.Normal(t(0.0), t(10.0)))
        with pyro.plate("subjects", S):
            a = pyro.sample("a", dist.Normal(t(0.0), t(1.0)))
        with pyro.plate("items", I):
            b = pyro.sample("b", dist.Normal(t(0.0), t(1.0)))
        with pyro.plate("data", N):
            pyro.sample("y", dist.Normal(mu + a[..., subject] + b[..., item], t(0.5)), obs=y)

    one_hot = torch.nn.functional.one_hot
    Z = torch.cat([torch.ones(N, 1, dtype=F64), one_hot(subject, S).to(F64),
                   one_hot(item, I).to(F64)], 1)  # fmt: skip
    prior_var = torch.tensor([100.0] + [1.0] * (S + I), dtype=F64)
    marginal = 0.25 * torch.eye(N, dtype=F64) + Z @ torch.diag(prior_var) @ Z.T
    evidence = float(dist.MultivariateNormal(torch.zeros(N, dtype=F64), marginal).log_prob(y))
    precision = torch.diag(1 / prior_var) + Z.T @ Z / 0.25
    optimum = evidence - 0.5 * float(precision.diagonal().log().sum() - torch.logdet(precision))
    means = torch.linalg.solve(precision, Z.T @ y / 0.25)
    return model, (subject, item, y), optimum, means


def test_crossed_effects_reach_the_mean_field_optimum_in_an_eighth_of_the_sweeps(crossed):
    """Plain sweeps crawl along the direction that trades μ against a and b (897 sweeps to tol 1e-12
    here); over-relaxed, 104; with the Newton step on the means (:mod:`pyro_vae.cavi.newton_means`,
    taken with over-relaxation), 2. The bound reaches the closed-form optimum to 1e-9 of its size
    (tol 1e-12 leaves about 1e-10 nats), never exceeds it by more than float64 rounding, and never
    falls; the means are the exact posterior means (mean field's are, for a Gaussian posterior) to
    1e-5 (the flat direction's residual at that tol). Plain sweeps, as many, stop far shorter."""
    model, data, optimum, means = crossed
    fit = AutoCAVI(model, tol=1e-12, max_iter=150).fit(*data)
    assert fit.converged_ and fit.n_iter_ < 150
    assert abs(fit.lower_bound_ - optimum) < 1e-9 * abs(optimum)
    assert fit.lower_bound_ <= optimum + 1e-10 * abs(optimum)
    assert np.all(np.diff(fit.lower_bounds_) >= -1e-12 * abs(optimum))
    q = fit.variational_distributions()
    fitted = torch.cat([q["mu"].loc.reshape(1), q["a"].loc, q["b"].loc])
    assert float((fitted - means).abs().max()) < 1e-5

    with warnings.catch_warnings():  # plain sweeps, as many: short of the optimum, warned
        warnings.simplefilter("error", ConvergenceWarning)
        with pytest.raises(ConvergenceWarning, match="max_iter=150.*set overrelax=True"):
            AutoCAVI(model, tol=1e-12, max_iter=150, overrelax=False).fit(*data)
    plain = AutoCAVI(model, tol=1e-12, max_iter=fit.n_iter_, overrelax=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        plain.fit(*data)
    assert optimum - plain.lower_bound_ > 1e3 * abs(optimum - fit.lower_bound_)


def test_overrelax_must_be_a_bool(crossed):
    model, data, _, _ = crossed
    with pytest.raises(ValueError, match=r"overrelax: 'yes' is not True or False"):
        AutoCAVI(model, overrelax="yes").fit(*data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        assert math.isfinite(AutoCAVI(model, overrelax=False, max_iter=2).fit(*data).lower_bound_)


def test_crossed_intercepts_sharing_their_level_stop_near_the_optimum_not_on_the_ridge():
    """y ~ N(a[g] + c[h], 0.5²) with both priors N(0, 10²): the level is split between a and
    c almost freely, and plain sweeps gain ~1e-9 nats each with nats to go (tester 12: 2.27
    nats short after 1,000 sweeps, 4·10⁵ to converge, at N = 3,000). Over-relaxed, the fit
    converges within 1e-5 nats of the closed-form mean-field optimum: a sweep's change below
    tol does not end it while a longer step still gains."""
    g = torch.Generator().manual_seed(20)
    n, ga, gc = 1000, 30, 20
    g1, g2 = torch.randint(0, ga, (n,), generator=g), torch.randint(0, gc, (n,), generator=g)
    y = (
        5
        + torch.randn(ga, generator=g, dtype=F64)[g1]
        + torch.randn(gc, generator=g, dtype=F64)[g2]
    )
    y = y + 0.5 * torch.randn(n, generator=g, dtype=F64)

    def model(g1, g2, y):
        with pyro.plate("A", ga):
            a = pyro.sample("a", dist.Normal(t(0.0), t(10.0)))
        with pyro.plate("B", gc):
            c = pyro.sample("c", dist.Normal(t(0.0), t(10.0)))
        with pyro.plate("data", n):
            pyro.sample("y", dist.Normal(a[..., g1] + c[..., g2], t(0.5)), obs=y)

    one_hot = torch.nn.functional.one_hot
    Z = torch.cat([one_hot(g1, ga).to(F64), one_hot(g2, gc).to(F64)], 1)
    marginal = 0.25 * torch.eye(n, dtype=F64) + 100.0 * Z @ Z.T
    evidence = float(dist.MultivariateNormal(torch.zeros(n, dtype=F64), marginal).log_prob(y))
    precision = torch.eye(ga + gc, dtype=F64) / 100.0 + Z.T @ Z / 0.25
    optimum = evidence - 0.5 * float(precision.diagonal().log().sum() - torch.logdet(precision))
    fit = AutoCAVI(model).fit(g1, g2, y)  # 115 sweeps here, 2.2e-6 nats short
    assert fit.converged_ and fit.n_iter_ < 200
    assert -1e-9 < optimum - fit.lower_bound_ < 1e-5
