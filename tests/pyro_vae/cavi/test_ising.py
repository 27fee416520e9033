import itertools
import math

import pytest
import torch

from pyro_vae.cavi import IsingMeanField, grid_couplings, ising_log_partition_exact


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


@pytest.mark.parametrize(
    "J, h, message",
    [
        (torch.zeros(3, 2), None, "not a square"),
        (torch.tensor([[0.0, 1.0], [2.0, 0.0]]), None, "not symmetric"),
        (torch.eye(2), None, "diagonal is not zero"),
        (torch.zeros(2, 2), torch.zeros(3), "h: shape"),
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
    with pytest.raises(ValueError, match="26 spins is too many"):
        ising_log_partition_exact(torch.zeros(26, 26))
