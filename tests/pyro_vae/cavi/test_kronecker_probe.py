"""Large factors of global latents probed on a grid (pyro_vae/cavi/kronecker_probe.py): the
per-axis solve is the least-squares solution on the whole Kronecker design, and AutoCAVI
fitted so reaches written-out VB and the exact conjugate regression."""

from types import SimpleNamespace

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_vae.cavi.least_squares as least_squares
from models.regression import BayesianRegression
from pyro_vae.cavi import AutoCAVI, BayesianLinearRegression, NotConjugateError
from pyro_vae.cavi.factor_support import tensor_product
from pyro_vae.cavi.kronecker_probe import (
    MIN_BASIS,
    axis_counts,
    eligible,
    kronecker_fit,
    on_support,
)
from tests.pyro_vae.cavi.ard import ard_vb
from tests.pyro_vae.cavi.float64 import F64, t


def _lstsq(a, b):
    return torch.linalg.lstsq(a, b, driver="gelsd").solution


def _relative(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64)
    return float((a - b).abs().max() / b.abs().max())


def test_the_per_axis_solve_is_least_squares_on_the_whole_kronecker_design():
    """Three members' statistics T_j [n_j, B_j] and log-densities at their grid with six
    right-hand sides (a factor batch [2, 3]): the per-axis solve equals one dense solve of
    torch.kron(T₁, T₂, T₃), the design tensor_product builds at the grid's points (row-major,
    the last member fastest), to float64 rounding of a design whose conditions multiply."""
    g = torch.Generator().manual_seed(0)
    stats = [torch.randn(n, b, generator=g, dtype=F64) for n, b in [(7, 3), (5, 4), (4, 2)]]
    values = torch.randn(7 * 5 * 4, 2, 3, generator=g, dtype=F64)
    kron = torch.kron(torch.kron(stats[0], stats[1]), stats[2])  # [140, 24]
    at_grid = [  # each member's statistics at every grid point, [140, 1, B_j]
        s.reshape([-1 if i == j else 1 for i in range(3)] + [s.shape[1]])
        .expand(7, 5, 4, s.shape[1])
        .reshape(140, 1, s.shape[1])
        for j, s in enumerate(stats)
    ]
    design = tensor_product(torch.ones(140, 1, 1, dtype=F64), at_grid).squeeze(1)
    assert torch.equal(design, kron)
    dense = _lstsq(kron, values.reshape(140, 6)).mT.reshape(2, 3, 24)
    fitted = kronecker_fit(stats, values, _lstsq)
    assert fitted.shape == (2, 3, 24)
    assert _relative(fitted, dense) < 1e-12


def test_a_plated_axis_is_solved_per_element_as_the_whole_design_is():
    """A member in the factor's plate (z [n, 3 elements, B]) beside a global one: at each
    of the 3 x 2 elements the per-axis solve equals one dense solve of that element's
    Kronecker design."""
    g = torch.Generator().manual_seed(1)
    plated = torch.randn(6, 3, 1, 4, generator=g, dtype=F64)  # [n, *view (rank 2), B]
    shared = torch.randn(5, 1, 1, 3, generator=g, dtype=F64)
    values = torch.randn(6 * 5, 3, 2, generator=g, dtype=F64)
    fitted = kronecker_fit([plated, shared], values, _lstsq)
    assert fitted.shape == (3, 2, 12)
    for i in range(3):
        for j in range(2):
            kron = torch.kron(plated[:, i, 0], shared[:, 0, 0])
            dense = _lstsq(kron, values[:, i, j].unsqueeze(-1)).squeeze(-1)
            assert _relative(fitted[i, j], dense) < 1e-12


def test_only_large_factors_of_continuous_latents_read_at_their_own_elements_take_a_grid():
    def member(family="Normal", size=40, batch=(), index=None):
        return SimpleNamespace(
            family=SimpleNamespace(name=family, size=size),
            batch_shape=torch.Size(batch),
            index=index,
        )

    large = [member(size=40), member(size=30)]
    assert 40 * 30 >= MIN_BASIS and eligible(large)
    assert eligible([member(size=40), member(size=30, batch=(3,))])  # in the factor's plate
    assert not eligible([member(size=40), member(size=20)])  # 800 coefficients
    assert not eligible([member(size=2000)])  # one member: no product to factor
    assert not eligible([member(size=40), member("Categorical", size=30)])
    assert not eligible([member(size=40), member(size=30, index=torch.zeros(4).long())])
    assert not eligible(large, components=frozenset({"means"}))  # a mixture's
    assert axis_counts(large) == [45, 33]  # B and B/8 more
    assert axis_counts([member(size=3), member(size=400)]) == [4, 450]


@pytest.fixture
def grid_calls(monkeypatch):
    """The shapes of the coefficients each grid solve returned."""
    calls = []

    def spy(*args, **kwargs):
        solved = kronecker_fit(*args, **kwargs)
        calls.append(tuple(solved.shape))
        return solved

    monkeypatch.setattr(least_squares, "kronecker_fit", spy)
    return calls


def _ard(d):
    def model(X, y):
        alpha = pyro.sample("alpha", dist.Gamma(t(1e-2), t(1e-2)).expand([d]).to_event(1))
        tau = pyro.sample("tau", dist.Gamma(t(1e-2), t(1e-2)))
        w = pyro.sample("w", dist.Normal(X.new_zeros(d), alpha.rsqrt()).to_event(1))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(X @ w, tau.rsqrt()), obs=y)

    return model


def test_ard_over_twenty_coordinates_is_mean_field_vb_written_out(grid_calls):
    """ARD regression, D = 20: the weight prior's 231 x 41 = 9,471 coefficients, one dense
    solve of 18 to 62 s before, are solved on a 259 x 46 grid; the fixed point is the
    written-out VB's (Bishop & Tipping 2000): the bound to 1e-10 (both converged to 1e-12,
    float64 rounding of sums of 100 terms), E[w] and E[α] to 1e-6."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(100, 20, generator=g, dtype=F64)
    truth = torch.zeros(20, dtype=F64)
    truth[:6] = 2 * torch.randn(6, generator=g, dtype=F64)
    y = X @ truth + 0.5 * torch.randn(100, generator=g, dtype=F64)
    fit = AutoCAVI(_ard(20), tol=1e-12, max_iter=500).fit(X, y)
    bound, alpha, mean, _ = ard_vb(X, y, (1e-2,) * 4)
    assert (9471,) in grid_calls
    assert fit.converged_
    assert abs(fit.lower_bound_ - bound) < 1e-10 * abs(bound)
    q = fit.variational_distributions()
    assert _relative(q["w"].mean, mean) < 1e-6
    assert _relative(q["alpha"].mean, alpha) < 1e-6


def test_a_grid_of_the_likelihood_with_every_datum_a_right_hand_side_is_exact(grid_calls):
    """models/regression.py at D = 40: the likelihood's 3 x 861 = 2,583 coefficients of
    (τ, w) at each of 200 data, solved on one grid (200 right-hand sides), and the weight
    prior's on another; the bound is BayesianLinearRegression's, whose q is the exact
    posterior here, to 1e-10."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(200, 40, generator=g, dtype=F64)
    y = X @ torch.randn(40, generator=g, dtype=F64) + 0.7 * torch.randn(200, generator=g, dtype=F64)
    a0, b0, lam0 = 2.0, 1.5, 0.5
    blr = BayesianLinearRegression(a0, b0, lam0, tol=1e-13).fit(X, y)
    start = {"precision": dist.Gamma(t(a0), t(b0))}
    fit = AutoCAVI(BayesianRegression(a0, b0, lam0), init=start, tol=1e-13).fit(X, y)
    assert (200, 2583) in grid_calls and (2583,) in grid_calls
    assert abs(fit.lower_bound_ - blr.lower_bound_) < 1e-10 * abs(blr.lower_bound_)
    assert fit.lower_bound_ <= blr.log_evidence_
    assert _relative(fit.variational_distributions()["weights"].mean, blr.coef_) < 1e-8


def test_a_large_factor_not_conjugate_is_refused_by_its_check_points(grid_calls):
    """The weight prior's scale α^(-1/2) + 0.1 is not conjugate to α: the grid solve runs,
    and the check points, where every latent varies, refuse it, naming α."""

    def model(X, y):
        alpha = pyro.sample("alpha", dist.Gamma(t(1.0), t(1.0)).expand([20]).to_event(1))
        w = pyro.sample("w", dist.Normal(X.new_zeros(20), alpha.rsqrt() + 0.1).to_event(1))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(X @ w, 1.0), obs=y)

    g = torch.Generator().manual_seed(2)
    X, y = torch.randn(30, 20, generator=g, dtype=F64), torch.randn(30, generator=g, dtype=F64)
    with pytest.raises(NotConjugateError, match="'alpha'.*not conditionally conjugate"):
        AutoCAVI(model).fit(X, y)
    assert (9471,) in grid_calls


def test_a_latent_the_grid_holds_fixed_but_the_factor_reads_unseen_is_refused(grid_calls):
    """The weight prior reads τ through a copy into a tensor made apart (``copy_``), which
    provenance cannot see: the grid holds τ at one draw, so its solve fits, but the check
    points move τ and the factor misses: refused as a hidden dependence, not fitted. (D = 10,
    66 x 21 = 1,386 coefficients: the copy keeps the model from broadcasting, so its grid
    is run one point at a time.)"""

    def model(X, y):
        alpha = pyro.sample("alpha", dist.Gamma(t(1.0), t(1.0)).expand([10]).to_event(1))
        tau = pyro.sample("tau", dist.Gamma(t(2.0), t(2.0)))
        hidden = torch.zeros(tau.shape, dtype=F64)
        hidden.copy_(tau)  # into a tensor made apart: the copy is not tracked
        w = pyro.sample("w", dist.Normal(X.new_zeros(10), alpha.rsqrt() * hidden).to_event(1))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(X @ w, tau.rsqrt()), obs=y)

    g = torch.Generator().manual_seed(3)
    X, y = torch.randn(30, 10, generator=g, dtype=F64), torch.randn(30, generator=g, dtype=F64)
    with pytest.raises(NotConjugateError, match="factor 'w'.*moves.*provenance"):
        AutoCAVI(model).fit(X, y)
    assert (1386,) in grid_calls


def _bayesian_pca(d, q):
    """Bishop's (1999) Bayesian PCA with ARD over W's columns: W as one vector of D·Q
    weights (each row read whole by every datum), z_n in the data plate."""

    def model(X):
        alpha = pyro.sample("alpha", dist.Gamma(t(1e-2), t(1e-2)).expand([q]).to_event(1))
        tau = pyro.sample("tau", dist.Gamma(t(1e-2), t(1e-2)))
        scale = alpha.rsqrt().unsqueeze(-2).expand(alpha.shape[:-1] + (d, q)).flatten(-2)
        W = pyro.sample("W", dist.Normal(torch.zeros_like(scale), scale).to_event(1))
        W = W.unflatten(-1, (d, q))
        with pyro.plate("data", len(X), dim=-1):
            z = pyro.sample("z", dist.Normal(X.new_zeros(q), 1.0).to_event(1))
            mean = (W * z.unsqueeze(-2)).sum(-1)  # [N, D]; broadcasts over a leading probe dim
            pyro.sample("x", dist.Normal(mean, tau.rsqrt()[..., None, None]).to_event(1), obs=X)

    return model


def test_bayesian_pca_is_a_fixed_point_of_its_updates_written_out(grid_calls, monkeypatch):
    """Bayesian PCA, N = 25, D = 4, Q = 3: the likelihood's 10 x 91 x 3 = 2,730
    coefficients at each datum (z_n, W, τ) are solved on one grid, z_n's axis one solve per
    datum (before: a dense design per datum, 15 GB at N = 100, D = 6, Q = 4), then again on
    the few columns it uses (on_support: 68,250 coefficients in all, past
    factor_support.MIN_SIZE), which the sweeps contract alone. Converged to
    1e-12 nats, q is a fixed point of the mean-field updates written out (Bishop 1999,
    §3): q(z_n) to 1e-9 (the last update in each sweep), q(W), q(α), q(τ) to 1e-6 (one
    sweep earlier: what a bound change below 1e-12 leaves)."""
    supports = []

    def spy(*args):
        found = on_support(*args)
        supports.append(None if found is None else int((found[0] != 0).any(0).sum()))
        return found

    monkeypatch.setattr(least_squares, "on_support", spy)
    n, d, k = 25, 4, 3
    g = torch.Generator().manual_seed(4)
    X = torch.randn(n, 2, generator=g, dtype=F64) @ torch.randn(2, d, generator=g, dtype=F64)
    X = X + 0.3 * torch.randn(n, d, generator=g, dtype=F64)
    fit = AutoCAVI(_bayesian_pca(d, k), tol=1e-12, max_iter=2000).fit(X)
    assert (n, 2730) in grid_calls and fit.converged_
    assert any(used is not None and used < 2730 // 10 for used in supports), supports
    q = fit.variational_distributions()
    e_tau, e_alpha = q["tau"].mean, q["alpha"].mean
    m_w, cov_w = q["W"].mean.reshape(d, k), q["W"].covariance_matrix
    rows = [cov_w[i * k : (i + 1) * k, i * k : (i + 1) * k] for i in range(d)]
    e_wtw = m_w.T @ m_w + sum(rows)
    cov_z = torch.linalg.inv(torch.eye(k, dtype=F64) + e_tau * e_wtw)
    m_z = e_tau * X @ m_w @ cov_z
    assert _relative(q["z"].mean, m_z) < 1e-9
    assert _relative(q["z"].covariance_matrix, cov_z.expand(n, k, k)) < 1e-9
    e_zz = n * cov_z + m_z.T @ m_z
    precision = torch.diag(e_alpha.repeat(d)) + e_tau * torch.kron(
        torch.eye(d, dtype=F64), e_zz.contiguous()
    )
    mean_w = torch.linalg.solve(precision, e_tau * (X.T @ m_z).reshape(-1))
    assert _relative(q["W"].mean, mean_w) < 1e-6
    assert _relative(cov_w, torch.linalg.inv(precision)) < 1e-6
    second = (m_w**2 + torch.stack([r.diagonal() for r in rows])).sum(0)  # Σ_d E[W_dq²]
    assert _relative(e_alpha, (1e-2 + d / 2) / (1e-2 + second / 2)) < 1e-6
    residual = (X**2).sum() - 2 * (X * (m_z @ m_w.T)).sum() + (e_wtw * e_zz).sum()
    assert _relative(e_tau, (1e-2 + n * d / 2) / (1e-2 + residual / 2)) < 1e-6
