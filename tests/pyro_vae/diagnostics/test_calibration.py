"""VSBC on an exact guide and on a mean-field guide with known underdispersion.

- Normal-Normal, μ ~ N(0, 1), x_i | μ ~ N(μ, 1): the posterior is Normal, so AutoNormal
  contains it and the quantiles p of the true μ are Uniform(0, 1).
- Normal-Gamma regression with the mean-field q(w) q(τ) at its CAVI optimum
  (pyro_vae.cavi.BayesianLinearRegression): q(τ) cannot carry the coupling of w and τ
  and is far too narrow, shape a₀ + (N + D)/2 against the exact a₀ + N/2, with the exact
  mean. The exact marginal of τ is a right-skewed Gamma, so the truth falls below q's
  centre more often than above: p(τ) skews low, by an amount known in closed form.
  q(w) has the exact posterior mean, so p(w) stays symmetric.
"""

import itertools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal
from scipy import integrate, special, stats

from pyro_vae.cavi import BayesianLinearRegression
from pyro_vae.diagnostics.calibration import symmetry_test, vsbc, vsbc_with
from pyro_vae.diagnostics.draws import variational_guide
from pyro_vae.plates import data_plate

pytestmark = pytest.mark.usefixtures("one_thread")


def normal_mean(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with data_plate(x):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def regression(X, y, a0=1.0):
    tau = pyro.sample("tau", dist.Gamma(a0, a0))
    scale = tau.rsqrt()[..., None]
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1]), scale).to_event(1))
    with data_plate(X):
        pyro.sample("y", dist.Normal((X * w).sum(-1), tau.rsqrt()), obs=y)


def test_symmetry_test_statistic_is_yao_et_als_ks_statistic():
    rng = np.random.default_rng(0)
    # The second has ties, in dyadic values so that 1 − p is exact in floating point.
    for p in (rng.uniform(size=300) ** 1.3, rng.integers(0, 33, size=200) / 32):
        assert symmetry_test(p)[0] == pytest.approx(stats.ks_2samp(p, 1 - p).statistic)
    # By hand: three points below 0.5 at distinct distances; the walk of signs is +1, +2,
    # +3, and P(max |S_k| ≥ 3) = P(three equal signs) = 2/8.
    assert symmetry_test(np.array([0.1, 0.2, 0.3])) == (1.0, pytest.approx(0.25))
    assert symmetry_test(np.array([0.2, 0.8, 0.5])) == (0.0, 1.0)  # mirror pair, centre


@pytest.mark.parametrize(
    "distances",
    [
        np.linspace(0.45, 0.01, 10),  # distinct
        np.array([0.4, 0.4, 0.3, 0.3, 0.3, 0.2, 0.1, 0.1, 0.05, 0.05]),  # tie blocks
    ],
)
def test_symmetry_p_value_is_exact_by_enumerating_every_sign_pattern(distances):
    # Under symmetry each p_i is 0.5 ± d_i with fair, independent signs: all 2^10 patterns
    # are equally likely, so the exact p-value of a pattern is the share of patterns whose
    # statistic is at least as large.
    patterns = np.array(list(itertools.product([-1.0, 1.0], repeat=distances.size)))
    results = [symmetry_test(0.5 + s * distances) for s in patterns]
    statistics = np.array([r[0] for r in results])
    for statistic, p_value in results:
        assert p_value == pytest.approx((statistics >= statistic - 1e-12).mean(), abs=1e-12)
    # The usual two-sample KS p-value treats p and 1 − p as independent samples; at the
    # all-same-sign pattern (statistic 1) it says 1e-5 where the exact answer is 2/1024.
    assert max(r[1] for r in results if r[0] == 1.0) == pytest.approx(2 / 1024)


def test_exact_guide_is_calibrated():
    result = vsbc(
        normal_mean, AutoNormal, torch.zeros(5), num_replications=400, num_steps=400, lr=0.05
    )
    p = result.quantiles["mu"]
    assert p.shape == (400,)
    # With a fixed seed each check below fails with probability ≤ 1% under calibration.
    assert result.ks_test("mu")[1] > 0.01
    assert stats.kstest(p, "uniform").pvalue > 0.01  # uniform, not only symmetric
    (row,) = result.table()
    assert abs(row["mean_p"] - 0.5) < 2.6 * row["se_mean_p"]


def test_mean_field_guide_with_known_underdispersion_is_asymmetric_as_predicted():
    a0, n, d = 0.5, 1, 16
    X = torch.randn(n, d, dtype=torch.float64)
    precision = torch.eye(d, dtype=torch.float64) + X.T @ X  # Λ = λ₀I + XᵀX, λ₀ = 1
    a, a_q = a0 + n / 2, a0 + (n + d) / 2

    def mean_field_optimum(data):
        # CAVI's fixed point in closed form: E_q[τ] = a/b, the exact posterior mean;
        # q(τ) = Gamma(a_q, a_q b/a), q(w) = N(m, (E_q[τ] Λ)⁻¹).
        y = data["y"].double()
        m = torch.linalg.solve(precision, X.T @ y)
        b = a0 + 0.5 * float(y @ y - m @ precision @ m)
        return variational_guide(
            {
                "tau": dist.Gamma(*torch.tensor([a_q, a_q * b / a], dtype=torch.float64)),
                "w": dist.MultivariateNormal(m, precision_matrix=(a / b) * precision),
            }
        )

    y = torch.randn(n, dtype=torch.float64)
    cavi = BayesianLinearRegression(a0, a0, 1.0).fit(X, y).variational_distributions("w", "tau")
    closed_form = mean_field_optimum({"y": y}).distributions
    for site in ("tau", "w"):  # CAVI stops where its ELBO, quadratic at the optimum,
        # changes by < 1e-12: parameters within ~1e-6 relative of the fixed point.
        for moment in ("mean", "variance"):
            expected = getattr(closed_form[site], moment)
            torch.testing.assert_close(getattr(cavi[site], moment), expected, rtol=1e-4, atol=0)

    result = vsbc_with(
        regression,
        mean_field_optimum,
        X.float(),
        torch.zeros(n),
        num_replications=800,
        num_draws=1000,
        a0=a0,
    )
    rows = {row["parameter"]: row for row in result.table()}
    assert set(rows) == {"tau"} | {f"w[{i}]" for i in range(d)}
    # q(τ) has the exact posterior mean a/b but shape a_q instead of a. With
    # g = bτ⁽ᵐ⁾ ~ Gamma(a, 1) (τ⁽ᵐ⁾ | y⁽ᵐ⁾ follows the exact posterior):
    #     p = G(a_q, a_q g / a),   P(p ≤ u) = G(a, a G⁻¹(a_q, u) / a_q),
    # G the regularized lower incomplete gamma function.
    gamma_a = stats.gamma(a)
    expected_mean = integrate.quad(
        lambda g: special.gammainc(a_q, a_q * g / a) * gamma_a.pdf(g), 0, np.inf
    )[0]
    assert expected_mean == pytest.approx(0.387, abs=1e-3)
    tau = rows["tau"]
    assert abs(tau["mean_p"] - expected_mean) < 4 * tau["se_mean_p"]
    assert tau["ks_pvalue"] < 1e-4  # asymmetric, in the predicted direction:
    assert tau["mean_p"] < 0.5 - 4 * tau["se_mean_p"]
    p = result.quantiles["tau"]
    for u in (0.05, 0.5, 0.95):  # U-shaped as predicted; 4 binomial standard errors
        cdf = special.gammainc(a, a * special.gammaincinv(a_q, u) / a_q)
        assert abs((p <= u).mean() - cdf) < 4 * math.sqrt(cdf * (1 - cdf) / p.size)
    # q(w) has the exact posterior mean: symmetric; 16 tests at 1e-4 each.
    assert min(rows[f"w[{i}]"]["ks_pvalue"] for i in range(d)) > 1e-4


def test_bad_arguments_are_named():
    x = torch.zeros(5)
    with pytest.raises(ValueError, match="num_replications: 1 is not an integer ≥ 2"):
        vsbc(normal_mean, AutoNormal, x, num_replications=1)
    with pytest.raises(ValueError, match=r"sites: \['sigma'\] \(unknown \['sigma'\]\)"):
        vsbc(normal_mean, AutoNormal, x, sites=["sigma"], num_steps=1)

    def prior_only(x):
        pyro.sample("mu", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"observed sites \[\]"):
        vsbc(prior_only, AutoNormal, x, num_steps=1)


def test_vsbc_with_takes_a_fitted_cavi_estimator_as_the_other_diagnostics_do():
    # fit returning the estimator itself failed in Pyro's words, "is not callable"
    # (tester DX); it is drawn from as to_inference_data draws from it: the same
    # quantiles as the guide made from its variational_distributions() by hand
    from models.regression import BayesianRegression

    X = torch.randn(12, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    estimator = BayesianLinearRegression(1.0, 1.0, 1.0)
    found = []
    for returned in (
        lambda data: estimator.fit(X, data["y"]),
        lambda data: variational_guide(estimator.fit(X, data["y"]).variational_distributions()),
    ):
        pyro.set_rng_seed(7)
        y = torch.zeros(12, dtype=torch.float64)  # observed: its values are simulated
        found.append(vsbc_with(BayesianRegression(), returned, X, y, num_replications=20))
    assert set(found[0].quantiles) == {"weights[0]", "weights[1]", "precision"}
    for name, p in found[1].quantiles.items():
        np.testing.assert_array_equal(found[0].quantiles[name], p)
