import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from pyro_vae.cavi import IsingMeanField, grid_couplings, ising_log_partition_exact
from pyro_vae.cavi.ising import fixed_point_residual


def brute_force_log_z(J, h, beta):
    terms = []
    for spins in itertools.product([-1.0, 1.0], repeat=J.shape[0]):
        s = torch.tensor(spins, dtype=torch.float64)
        terms.append(beta * (0.5 * s @ J @ s + h @ s))
    return float(torch.logsumexp(torch.stack(terms), 0))


def test_blocked_enumeration_equals_the_one_by_one_sum():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(7, 7, generator=g, dtype=torch.float64)
    J = (A + A.T) / 2
    J.fill_diagonal_(0)
    h = torch.randn(7, generator=g, dtype=torch.float64)
    assert ising_log_partition_exact(J, h, 0.7) == pytest.approx(
        brute_force_log_z(J, h, 0.7), abs=1e-10
    )


def test_couplings_asymmetric_by_rounding_read_as_their_symmetric_part():
    # tester Z: allclose let J12 − J21 = 0.01 through (at 1000), and the exact log Z summed
    # the upper block's cross term: exact(J) and exact(Jᵀ) were 0.01 apart, the brute
    # force of ½ sᵀJs between them. Now it is refused, and rounding's asymmetry (W @ Wᵀ)
    # reads as the symmetric part, as the density does.
    with pytest.raises(ValueError, match=r"not symmetric \(\|J − Jᵀ\| up to 0.01\)"):
        ising_log_partition_exact(torch.tensor([[0.0, 1000.0], [1000.01, 0.0]]))
    g = torch.Generator().manual_seed(1)
    W = torch.randn(9, 3, generator=g, dtype=torch.float64)
    J = W @ W.T
    J.fill_diagonal_(0)
    J[0, 5] += 1e-14  # rounding's size
    h = torch.randn(9, generator=g, dtype=torch.float64)
    exact = brute_force_log_z(J, h, 0.3)
    assert ising_log_partition_exact(J, h, 0.3) == pytest.approx(exact, abs=1e-12)
    assert ising_log_partition_exact(J.T.contiguous(), h, 0.3) == pytest.approx(exact, abs=1e-12)
    # tester AB: Q diag(1 + δ) Qᵀ is symmetric but for rounding of its largest entries'
    # scale, 1e-16, far more than 1e-12 of its smallest ones: accepted
    Q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    J = Q @ torch.diag(1 + 1e-6 * torch.randn(6, generator=g, dtype=torch.float64)) @ Q.T
    J.fill_diagonal_(0)
    assert 0 < float((J - J.T).abs().max()) < 1e-15
    h = torch.zeros(6, dtype=torch.float64)
    assert ising_log_partition_exact(J) == pytest.approx(brute_force_log_z(J, h, 1.0))


def test_without_couplings_mean_field_is_exact():
    h = torch.tensor([0.3, -1.0, 0.0, 2.0], dtype=torch.float64)
    J = torch.zeros(4, 4, dtype=torch.float64)
    beta = 0.8
    exact = float(torch.log(2 * torch.cosh(beta * h)).sum())
    fit = IsingMeanField(beta=beta).fit(J, h)
    assert ising_log_partition_exact(J, h, beta) == pytest.approx(exact, abs=1e-12)
    assert fit.lower_bound_ == pytest.approx(exact, abs=1e-9)
    torch.testing.assert_close(fit.magnetization_, torch.tanh(beta * h))


@pytest.mark.parametrize("side", [2, 3, 4, 5])
@pytest.mark.parametrize("beta", [0.1, 0.3, 0.44, 0.7, 1.5])
@pytest.mark.parametrize("field", [0.0, 0.2])
def test_mean_field_bound_is_below_exact_log_z_on_grids(side, beta, field):
    J = grid_couplings(side, side)
    h = torch.full((side * side,), field, dtype=torch.float64)
    fit = IsingMeanField(beta=beta, n_init=3, random_state=0).fit(J, h)
    exact = ising_log_partition_exact(J, h, beta)
    assert fit.converged_
    assert fit.lower_bound_ <= exact + 1e-9
    # Not vacuous: at least the entropy of the uniform q, n log 2, once β is small.
    assert fit.lower_bound_ >= side * side * math.log(2) - 1e-9


def test_sequential_sweeps_never_decrease_the_bound():
    J = grid_couplings(4, 4, coupling=1.0)
    h = torch.linspace(-0.5, 0.5, 16, dtype=torch.float64)
    fit = IsingMeanField(beta=1.2, random_state=1).fit(J, h)
    bounds = torch.tensor(fit.lower_bounds_)
    assert (bounds[1:] - bounds[:-1] >= -1e-12).all()
    assert fit.n_iter_ == len(fit.lower_bounds_)


def test_parallel_damped_updates_reach_the_same_fixed_point():
    J = grid_couplings(3, 3, coupling=0.5)
    h = torch.full((9,), 0.1, dtype=torch.float64)
    seq = IsingMeanField(beta=0.8, random_state=0).fit(J, h)
    par = IsingMeanField(beta=0.8, update="parallel", damping=0.5, random_state=0).fit(J, h)
    # tol stops on the bound, which is flat (quadratic) at the optimum: m is only
    # converged to about sqrt(tol) = 1e-5.
    torch.testing.assert_close(seq.magnetization_, par.magnetization_, atol=1e-4, rtol=0)


def mean_field_step(m, J, h, beta):
    """The mean-field equations' right-hand side, tanh(β (h + J m)), written out here."""
    return torch.tanh(beta * (h + J @ m))


@pytest.mark.parametrize(
    "update, damping, side, beta, field",
    [
        ("sequential", 0.5, 5, 0.44, 0.0),
        ("sequential", 0.5, 5, 0.7, 0.1),
        ("parallel", 0.5, 5, 0.7, 0.0),
        ("parallel", 0.5, 3, 0.8, 0.1),
        ("parallel", 1.0, 4, 1.0, 0.0),  # undamped, and no cycle from this start
    ],
)
def test_converged_means_a_fixed_point_of_the_mean_field_equations(
    update, damping, side, beta, field
):
    J = grid_couplings(side, side)
    h = torch.full((side * side,), field, dtype=torch.float64)
    tol = 1e-10
    fit = IsingMeanField(beta, update, damping, tol=tol, random_state=0).fit(J, h)
    assert fit.converged_ and fit.n_iter_ < fit.max_iter
    m = fit.magnetization_
    residual = (mean_field_step(m, J, h, beta) - m).abs().max().item()
    # Pinsker: KL(q_i ‖ q_i') ≥ ½ (m_i − m_i')², so a state whose summed KL residual is
    # below tol has |tanh(β(h + Jm)) − m| ≤ sqrt(2 tol) at every spin. A sequential sweep
    # that gained < tol moved each spin by ≤ sqrt(2 tol); each spin's input has since moved
    # by at most (its degree ≤ 4) x sqrt(2 tol), and tanh(β ·) is β-Lipschitz.
    allowed = math.sqrt(2 * tol) * (1 if update == "parallel" else 4 * beta)
    assert residual <= allowed
    if update == "parallel":
        assert fixed_point_residual(m, J, h, beta) < tol


@pytest.mark.parametrize("beta", [0.44, 0.7])
def test_undamped_parallel_updates_that_cycle_do_not_converge(beta):
    # On a bipartite grid with no field, all-at-once updates from a small random start
    # overshoot into a 2-cycle between the two checkerboard (antiferromagnetic) patterns:
    # the bound is the same at both, so "the bound stopped changing" is not a fixed point.
    J = grid_couplings(5, 5)
    h = torch.zeros(25, dtype=torch.float64)
    par = IsingMeanField(beta, "parallel", damping=1.0, random_state=0).fit(J, h)
    seq = IsingMeanField(beta, random_state=0).fit(J, h)
    m = par.magnetization_
    once = mean_field_step(m, J, h, beta)
    assert not par.converged_ and par.n_iter_ == par.max_iter
    assert (once - m).abs().max() > 1.0  # one update flips the spins: no fixed point
    # ... and a second flips them back: a 2-cycle (equal up to float rounding).
    torch.testing.assert_close(mean_field_step(once, J, h, beta), m, rtol=0, atol=1e-12)
    signs = torch.sign(m).view(5, 5)
    checkerboard = torch.tensor([[(-1.0) ** (r + c) for c in range(5)] for r in range(5)])
    assert torch.equal(signs, checkerboard.to(signs)) or torch.equal(signs, -checkerboard.to(signs))
    # The cycle's bound is far below the sequential fixed point's (23.5 and 52.4 nats).
    assert seq.converged_ and par.lower_bound_ < seq.lower_bound_ - 20


@pytest.mark.parametrize(
    "J, h, message",
    [
        (torch.zeros(3, 2), None, "not a square"),
        (torch.tensor([[0.0, 1.0], [2.0, 0.0]]), None, "not symmetric"),
        (
            torch.eye(2),
            None,
            r"diagonal is not zero \(2 of 2 entries; J\[0, 0\] = 1\); expected zeros",
        ),
        (torch.zeros(2, 2), torch.zeros(3), "h: shape"),
        (torch.tensor([[0.0, float("nan")], [1.0, 0.0]]), None, "J: 1 of its 4 entries is NaN"),
        (torch.zeros(2, 2), torch.tensor([0.0, float("inf")]), "h: 1 of its 2 .* infinite"),
        (torch.zeros(0, 0), None, "no spins"),
        ([["a", "b"], ["c", "d"]], None, "J: dtype <U1 is not real"),
    ],
)
def test_bad_models_are_named(J, h, message):
    with pytest.raises(ValueError, match=message):
        IsingMeanField().fit(J, h)


def test_bad_settings_and_too_many_spins():
    with pytest.raises(ValueError, match="update: 'random'"):
        IsingMeanField(update="random").fit(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="damping: 0"):
        IsingMeanField(damping=0).fit(torch.zeros(2, 2))
    # tester BO: β = 1e308 gave lower_bound_ = inf with converged_ True; random_state=-1
    # NumPy's "expected non-negative integer"
    with pytest.raises(ValueError, match="beta: 1e.308 times the couplings' and fields'"):
        IsingMeanField(beta=1e308).fit(grid_couplings(2, 2))
    with pytest.raises(ValueError, match="random_state: -1 is not a seed"):
        IsingMeanField(random_state=-1).fit(grid_couplings(2, 2))
    with pytest.raises(ValueError, match="26 spins is too many"):
        ising_log_partition_exact(torch.zeros(26, 26))
    with pytest.raises(ValueError, match="rows: 0 is not a positive integer"):
        grid_couplings(0, 3)
    with pytest.raises(ValueError, match="coupling: nan"):
        grid_couplings(2, 2, coupling=float("nan"))
    with pytest.raises(ValueError, match="beta: nan"):
        ising_log_partition_exact(torch.zeros(2, 2), beta=float("nan"))
    for name, value, message in [
        ("tol", -1e-3, "tol: -0.001 is not a finite non-negative number"),
        ("tol", float("nan"), "tol: nan"),
        ("max_iter", 2.5, "max_iter: 2.5 is not a positive integer"),
        ("n_init", 0, "n_init: 0 is not a positive integer"),
        ("n_init", True, "n_init: True is not a positive integer"),
    ]:
        with pytest.raises(ValueError, match=message):
            IsingMeanField(**{name: value}).fit(torch.zeros(2, 2))


def test_numpy_integer_settings_are_accepted():
    J = grid_couplings(2, 2)
    with_numpy = IsingMeanField(n_init=np.int64(2), max_iter=np.int32(50), random_state=0).fit(J)
    plain = IsingMeanField(n_init=2, max_iter=50, random_state=0).fit(J)
    assert with_numpy.lower_bound_ == plain.lower_bound_


def test_variational_distributions_give_the_magnetization_as_bits():
    J, h = grid_couplings(2, 2), torch.full((4,), 0.3)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        IsingMeanField().variational_distributions()
    fit = IsingMeanField(beta=0.5, random_state=0).fit(J, h)
    q = fit.variational_distributions()["spins"]
    assert q.event_shape == (4,)
    assert torch.allclose(2 * q.mean - 1, fit.magnetization_.to(q.mean.dtype))  # s = 2b − 1


def test_a_numpy_random_state_seeds_as_the_integer_it_draws():
    """scikit-learn's random_state convention (tester EP): a RandomState seeds the
    magnetizations as the integer it draws."""
    J, h = grid_couplings(3, 3), torch.full((9,), 0.1, dtype=torch.float64)
    drawn = int(np.random.RandomState(5).randint(2**31 - 1))
    fit = IsingMeanField(beta=0.8, n_init=2, random_state=np.random.RandomState(5)).fit(J, h)
    same = IsingMeanField(beta=0.8, n_init=2, random_state=drawn).fit(J, h)
    assert fit.lower_bounds_ == same.lower_bounds_
