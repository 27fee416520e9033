"""The Newton step on the Normal factors' means, and AutoCAVI's stop confirmed by it."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from pyro_vae.cavi import AutoCAVI, NotConjugateError
from pyro_vae.cavi.newton_means import MAX_COORDINATES, newton_step

F64 = torch.float64


def _quadratic(precision: torch.Tensor, shift: torch.Tensor):
    """−½ mᵀPm + hᵀm over m split as a scalar and a 2-vector (two "latents")."""

    def objective(means):
        m = torch.cat([means[0].reshape(1), means[1]])
        return -0.5 * m @ precision @ m + shift @ m

    return objective


def test_one_step_reaches_a_concave_quadratics_maximum_and_predicts_its_gain():
    g = torch.Generator().manual_seed(0)
    root = torch.randn(3, 3, generator=g, dtype=F64)
    precision = root @ root.T + 0.1 * torch.eye(3, dtype=F64)
    shift = torch.randn(3, generator=g, dtype=F64)
    objective = _quadratic(precision, shift)
    start = [torch.tensor(0.3, dtype=F64), torch.tensor([-1.0, 2.0], dtype=F64)]
    step, predicted = newton_step(objective, start)
    moved = [s + d for s, d in zip(start, step, strict=True)]
    optimum = np.linalg.solve(precision.numpy(), shift.numpy())  # P m = h
    got = np.concatenate([moved[0].reshape(1).numpy(), moved[1].numpy()])
    np.testing.assert_allclose(got, optimum, rtol=1e-10, atol=1e-12)
    gain = float(objective(moved) - objective(start))
    assert abs(predicted - gain) <= 1e-10 * (1 + abs(gain))
    assert step[0].shape == () and step[1].shape == (2,)


def test_a_coordinate_the_objective_does_not_read_keeps_a_step_of_zero():
    precision = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=F64)

    def objective(means):  # the vector's second element is absent (masked off)
        m = torch.stack([means[0], means[1][0]])
        return -0.5 * m @ precision @ m + m.sum()

    step, _ = newton_step(objective, [torch.tensor(0.0, dtype=F64), torch.zeros(2, dtype=F64)])
    optimum = np.linalg.solve(precision.numpy(), np.ones(2))
    np.testing.assert_allclose([float(step[0]), float(step[1][0])], optimum, rtol=1e-12)
    assert float(step[1][1]) == 0.0


def test_no_step_where_the_objective_is_not_concave_or_too_large():
    saddle = _quadratic(
        torch.diag(torch.tensor([1.0, -1.0, 1.0], dtype=F64)), torch.ones(3, dtype=F64)
    )
    start = [torch.tensor(0.0, dtype=F64), torch.zeros(2, dtype=F64)]
    assert newton_step(saddle, start) is None
    big = [torch.zeros(MAX_COORDINATES + 1, dtype=F64)]
    assert newton_step(lambda means: -(means[0] ** 2).sum(), big) is None


def _random_walk(sd: float, y: torch.Tensor):
    def model(y):
        theta = pyro.sample("th0", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
        pyro.sample("y0", dist.Normal(theta, 1.0), obs=y[0])
        for t in range(1, len(y)):
            theta = pyro.sample(f"th{t}", dist.Normal(theta, sd))
            pyro.sample(f"y{t}", dist.Normal(theta, 1.0), obs=y[t])

    return model


def _mean_field_optimum(sd: float, y: np.ndarray) -> float:
    """Mean field's optimal ELBO of :func:`_random_walk`, written out: the joint is Gaussian
    with precision P (tridiagonal), so q_t = N(m_t, 1/P_tt) with P m = y, and the ELBO is
    E_q[log p(θ, y)] + Σ_t H[q_t]."""
    n, s2 = len(y), sd**2
    precision = np.eye(n)  # the data's
    precision[0, 0] += 1.0  # θ0's prior
    for t in range(1, n):
        precision[t - 1 : t + 1, t - 1 : t + 1] += np.array([[1, -1], [-1, 1]]) / s2
    m, v = np.linalg.solve(precision, y), 1 / np.diag(precision)
    c = -0.5 * math.log(2 * math.pi)
    elbo = c - 0.5 * (m[0] ** 2 + v[0])
    for t in range(1, n):
        elbo += c - 0.5 * math.log(s2) - 0.5 * ((m[t] - m[t - 1]) ** 2 + v[t] + v[t - 1]) / s2
    elbo += sum(c - 0.5 * ((y[t] - m[t]) ** 2 + v[t]) for t in range(n))
    return elbo + 0.5 * np.log(2 * math.pi * math.e * v).sum()


def _walk_data() -> torch.Tensor:
    return 2.0 + torch.randn(20, generator=torch.Generator().manual_seed(0), dtype=F64)


@pytest.mark.parametrize("sd, tol", [(1e-2, 1e-8), (1e-3, 1e-6), (1e-4, 1e-6)])
def test_a_tight_random_walk_reaches_mean_fields_optimum(sd, tol):
    """Tester S's F1: a random walk linked far more tightly than its data inform it crawled
    along the link, each sweep gaining little: at sd 10⁻³ the fit ran out of its 2,000 sweeps
    29 nats short (warned). It now reaches mean field's optimum, written out here, in a few
    sweeps; within 1e-6 nats (at sd 10⁻³ the float64 rounding of factors whose coefficients
    are 10⁶ moves the bound by up to 1e-7)."""
    y = _walk_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        fit = AutoCAVI(_random_walk(sd, y), tol=tol, max_iter=2000).fit(y)
    optimum = _mean_field_optimum(sd, y.numpy())
    assert fit.converged_ and fit.n_iter_ <= 10
    assert abs(fit.lower_bound_ - optimum) < 1e-6
    assert fit.lower_bound_ <= optimum + 1e-9 * abs(optimum)


def test_a_random_walk_too_tight_for_float64_is_not_reported_converged():
    """At sd 10⁻⁴ and tol 1e-6 the fit stopped converged_ after 2 sweeps near its prior, 35
    nats below mean field's optimum, without a warning (it now reaches the optimum, above).
    At sd 10⁻⁵ the factors probed in float64 cannot follow the link: the Newton step
    predicts 35 nats its imprecise factors will not give, so the sweeps' stop is not
    confirmed (a first version took no step and reported converged_, 34 nats short), and
    the fit runs out of sweeps, warned; or, where the CPU's rounding takes the factors
    further off (this depends on its BLAS's kernels), the check at q refuses them, naming
    the tight link and the way out. Either way no bound is reported converged."""
    y = _walk_data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fit = AutoCAVI(_random_walk(1e-5, y), tol=1e-6, max_iter=100).fit(y)
        except NotConjugateError as error:
            assert "linked far more tightly" in str(error)
            return
    assert not fit.converged_
    assert any(
        issubclass(w.category, ConvergenceWarning)
        and "max_iter=100 sweeps without converging" in str(w.message)
        for w in caught
    )
