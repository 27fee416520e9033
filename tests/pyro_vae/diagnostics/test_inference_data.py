"""ArviZ conversion against models whose posterior is known in closed form.

- Normal-Gamma Bayesian linear regression (global latents w, τ): the exact posterior and
  log p(y) come from :class:`pyro_vae.cavi.BayesianLinearRegression`, so with the exact
  posterior as the guide every draw has lp − log_q = log p(y), and the CAVI fit's
  mean(lp − log_q) is its closed-form ELBO.
- A VAE: lp and log_q recomputed from the stored groups and the encoder.
- A model that cannot broadcast: drawn in a loop.
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

from models.vae import VAE
from pyro_vae.cavi import AutoCAVI, BayesianLinearRegression
from pyro_vae.diagnostics.arviz_compat import az
from pyro_vae.diagnostics.inference_data import (
    FORMAT,
    load_inference_data,
    save_inference_data,
    to_inference_data,
)
from pyro_vae.diagnostics.psis import psis_khat
from pyro_vae.plates import data_plate
from tests.pyro_vae.test_evaluate import make_guide, model

A0, B0, LAM0 = 2.0, 2.0, 1.0
N, D = 40, 3  # the rows and columns of the `data` fixture (conftest.py)

pytestmark = pytest.mark.usefixtures("one_thread")


def regression(X, y):
    a0, b0 = (torch.tensor(v, dtype=X.dtype) for v in (A0, B0))
    tau = pyro.sample("precision", dist.Gamma(a0, b0))
    scale = (tau * LAM0).rsqrt()[..., None]
    w = pyro.sample(
        "weights", dist.Normal(torch.zeros(X.shape[1], dtype=X.dtype), scale).to_event(1)
    )
    with data_plate(X):
        pyro.sample("y", dist.Normal((X * w).sum(-1), tau.rsqrt()), obs=y)


def exact_posterior_guide(fit):
    """q = p(w, τ | y): τ ~ Gamma(a, b), w | τ ~ N(m, (τ Λ)⁻¹)."""

    shape, rate = (
        torch.tensor(v, dtype=torch.float64) for v in (fit.posterior_shape_, fit.posterior_rate_)
    )

    def guide(X, y):
        tau = pyro.sample("precision", dist.Gamma(shape, rate))
        precision = tau[..., None, None] * fit.posterior_precision_matrix_
        pyro.sample(
            "weights", dist.MultivariateNormal(fit.posterior_mean_, precision_matrix=precision)
        )

    return guide


def _shapes(idata):
    return {
        group: {k: (v.dims, v.shape) for k, v in idata[group].data_vars.items()}
        for group in idata.groups()
    }


def test_regression_round_trip_with_documented_groups_dims_and_shapes(data, tmp_path):
    X, y = data
    fit = BayesianLinearRegression(A0, B0, LAM0).fit(X, y)
    idata = to_inference_data(regression, fit, X, y, num_samples=4000)
    expected = {
        "posterior": {
            "precision": (("chain", "draw"), (1, 4000)),
            "weights": (("chain", "draw", "weights_dim_0"), (1, 4000, D)),
        },
        "posterior_predictive": {"y": (("chain", "draw", "data"), (1, 4000, N))},
        "log_likelihood": {"y": (("chain", "draw", "data"), (1, 4000, N))},
        "sample_stats": {
            "lp": (("chain", "draw"), (1, 4000)),
            "log_q": (("chain", "draw"), (1, 4000)),
        },
        "observed_data": {"y": (("data",), (N,))},
    }
    assert _shapes(idata) == expected
    back = load_inference_data(save_inference_data(idata, tmp_path / "diagnostics.nc"))
    assert _shapes(back) == expected and back.attrs["pyro_vae_format"] == FORMAT
    np.testing.assert_array_equal(
        back.posterior["weights"].values, idata.posterior["weights"].values
    )
    np.testing.assert_array_equal(back.observed_data["y"].values, y.numpy())

    summary = az.summary(back, var_names=["weights", "precision"], kind="stats")
    # q(w) = N(coef_, coef_covariance_): 4000 independent draws, 4 standard errors.
    se = fit.coef_covariance_.diagonal().sqrt().numpy() / math.sqrt(4000)
    assert (np.abs(summary["mean"].values[:D] - fit.coef_.numpy()) < 4 * se).all()
    loo = az.loo(back, pointwise=True)
    assert loo.pareto_k.shape == (N,) and np.isfinite(loo.elpd_loo)
    # E_q[log p(y, w, τ) − log q(w, τ)] is CAVI's closed-form ELBO; 4 standard errors.
    log_w = (back.sample_stats["lp"] - back.sample_stats["log_q"]).values.ravel()
    assert abs(log_w.mean() - fit.lower_bound_) < 4 * log_w.std() / math.sqrt(log_w.size)


def test_exact_posterior_guide_gives_constant_ratios_equal_to_the_evidence(data):
    X, y = data
    fit = BayesianLinearRegression(A0, B0, LAM0).fit(X, y)
    guide = exact_posterior_guide(fit)
    idata = to_inference_data(regression, guide, X, y, num_samples=50)
    log_w = (idata.sample_stats["lp"] - idata.sample_stats["log_q"]).values.ravel()
    np.testing.assert_allclose(log_w, fit.log_evidence_, rtol=0, atol=1e-8)
    # lp = Σ_n log p(y_n | w, τ) + log p(w | τ) + log p(τ), from the stored groups alone.
    tau = torch.as_tensor(idata.posterior["precision"].values[0])
    w = torch.as_tensor(idata.posterior["weights"].values[0])
    log_prior = dist.Gamma(A0, B0).log_prob(tau).double() + dist.Normal(
        0.0, (tau * LAM0).rsqrt()[:, None]
    ).log_prob(w).sum(1)
    log_lik = torch.as_tensor(idata.log_likelihood["y"].sum("data").values[0])
    lp = torch.as_tensor(idata.sample_stats["lp"].values[0])
    torch.testing.assert_close(lp, log_lik + log_prior, rtol=0, atol=1e-5)
    assert psis_khat(regression, guide, X, y, num_samples=200) == -math.inf


def test_an_autocavi_block_fit_is_drawn_jointly_as_the_exact_posterior(data):
    # AutoCAVI's Normal-Gamma block on the regression is p(w, τ | y); drawn jointly (τ, then
    # w given τ) every draw scores the closed-form evidence, and PSIS's k̂ is −inf. Drawn
    # from the marginals (Student-t, Gamma) the ELBO fell 13 standard errors short.
    X, y = data
    fit = AutoCAVI(regression, blocks=[("weights", "precision")], tol=1e-12).fit(X, y)
    evidence = BayesianLinearRegression(A0, B0, LAM0).fit(X, y).log_evidence_
    idata = to_inference_data(regression, fit, X, y, num_samples=50)
    log_w = (idata.sample_stats["lp"] - idata.sample_stats["log_q"]).values.ravel()
    np.testing.assert_allclose(log_w, evidence, rtol=0, atol=1e-8)
    assert psis_khat(regression, fit, X, y, num_samples=200) == -math.inf


def test_autoguides_keep_site_names_and_their_log_q_matches_pyros_elbo(data):
    X, y = data
    X, y = X.float(), y.float()
    for make in (AutoNormal, AutoMultivariateNormal):
        pyro.clear_param_store()
        guide = make(regression)
        svi = SVI(regression, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
        for _ in range(50):  # any guide will do; a few steps move it off its initial values
            svi.step(X, y)
        idata = to_inference_data(regression, guide, X, y, num_samples=2000)
        assert set(idata.posterior.data_vars) == {"weights", "precision"}  # no auxiliary latent
        assert idata.posterior["weights"].dims == ("chain", "draw", "weights_dim_0")
        log_w = (idata.sample_stats["lp"] - idata.sample_stats["log_q"]).values.ravel()
        elbo = Trace_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=1)
        pyro_elbo = -elbo.loss(regression, guide, X, y)
        # Two independent 2000-draw estimates of the same ELBO: 4 standard errors of the
        # difference. log q includes the multivariate guide's latent and Jacobian.
        se = math.sqrt(2) * log_w.std() / math.sqrt(log_w.size)
        assert abs(log_w.mean() - pyro_elbo) < 4 * se, make.__name__


def test_vae_round_trip_and_consistent_groups(tmp_path):
    vae = VAE(x_dim=16, latent_dim=3, hidden_dims=(8,))
    guide = vae.make_guide()
    x = torch.bernoulli(torch.full((12, 16), 0.3))
    idata = to_inference_data(vae, guide, x, num_samples=30)
    back = load_inference_data(save_inference_data(idata, tmp_path / "vae.nc"))
    assert _shapes(back) == {
        "posterior": {"z": (("chain", "draw", "data", "z_dim_0"), (1, 30, 12, 3))},
        "posterior_predictive": {"x": (("chain", "draw", "data", "x_dim_0"), (1, 30, 12, 16))},
        "log_likelihood": {"x": (("chain", "draw", "data"), (1, 30, 12))},
        "sample_stats": {"lp": (("chain", "draw"), (1, 30)), "log_q": (("chain", "draw"), (1, 30))},
        "observed_data": {"x": (("data", "x_dim_0"), (12, 16))},
    }
    assert set(np.unique(back.posterior_predictive["x"].values)) <= {0.0, 1.0}
    # lp = Σ_n log p(x_n | z_n) + log N(z_n; 0, I) and log_q = Σ_n log q(z_n | x_n), exactly.
    z = torch.as_tensor(back.posterior["z"].values[0])
    log_prior = dist.Normal(0.0, 1.0).log_prob(z).sum((1, 2))
    log_lik = torch.as_tensor(back.log_likelihood["x"].values[0]).sum(1)
    with torch.no_grad():
        log_q = guide.encode(x).log_prob(z).sum((1, 2))
    for name, expected in (("lp", log_lik + log_prior), ("log_q", log_q)):
        # float32 sums of about 250 terms of size ~1 in a different order: 1e-6 relative.
        actual = torch.as_tensor(back.sample_stats[name].values[0])
        torch.testing.assert_close(actual, expected.double(), rtol=1e-6, atol=1e-5)
    assert az.summary(back, var_names=["z"], coords={"data": [0]}, kind="stats").shape == (3, 4)
    assert az.loo(back).elpd_loo < 0


def test_bad_input_is_refused_with_the_argument_named(data, gaussian_x, tmp_path):
    X, y = data

    def guide_without_tau(X, y):
        pyro.sample("weights", dist.Normal(torch.zeros(D), 1.0).to_event(1))

    with pytest.raises(ValueError, match=r"latent site\(s\) \['precision'\]"):
        to_inference_data(regression, guide_without_tau, X, y, num_samples=10)
    with pytest.raises(ValueError, match="num_samples: 1 is not an integer ≥ 2"):
        to_inference_data(model, make_guide(), gaussian_x, num_samples=1)
    with pytest.raises(ValueError, match="not fitted"):
        to_inference_data(regression, BayesianLinearRegression(), X, y)

    foreign = tmp_path / "foreign.nc"
    az.from_dict(posterior={"a": np.zeros((1, 5))}).to_netcdf(foreign)
    with pytest.raises(ValueError, match="format None; this version of pyro_vae reads"):
        load_inference_data(foreign)
    (tmp_path / "corrupt.nc").write_text("not netcdf")
    with pytest.raises(ValueError, match="could not be read as ArviZ netCDF"):
        load_inference_data(tmp_path / "corrupt.nc")
    with pytest.raises(ValueError, match="is not a file"):
        load_inference_data(tmp_path / "absent.nc")


def test_a_model_that_cannot_broadcast_is_drawn_in_a_loop():
    from pyro_vae.traces import VectorizationWarning
    from tests.pyro_vae.estimators.test_base import X_MISSING, masked_guide, masked_model

    with pytest.warns(VectorizationWarning):
        idata = to_inference_data(masked_model, masked_guide, X_MISSING, num_samples=30)
    z = idata.posterior["z"].values
    assert z.shape == (1, 30, 3) and z.std() > 0.1
    predictive = idata.posterior_predictive["x"].values
    # each draw's own likelihood N(z_s, 1): the predictive spread exceeds one draw's noise
    assert predictive.shape[:2] == (1, 30) and predictive.std(axis=1).min() > 0.5
    # the exact guide makes every importance ratio p(x_obs): k̂ = −inf (constant ratios)
    lp, log_q = idata.sample_stats["lp"].values, idata.sample_stats["log_q"].values
    assert np.ptp(lp - log_q) < 1e-4


def test_data_with_two_plates_of_one_size_leave_the_data_plate_unnamed():
    """N = G: the rows match both plates. The plate is metadata only, and the refusal it
    raised advised a data_plate option to_inference_data does not take. Here q is each
    group mean's exact posterior (AutoCAVI), so every draw's lp − log_q is the evidence,
    Σ_g log N(y_g; 0.5·1, 0.8²I + 2²11ᵀ)."""
    y = torch.randn(3, 3, generator=torch.Generator().manual_seed(10), dtype=torch.float64)

    def groups(y):
        with pyro.plate("g", 3, dim=-1):
            mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.5), 2.0))
            with pyro.plate("n", 3, dim=-2):
                pyro.sample("y", dist.Normal(mu, 0.8), obs=y)

    idata = to_inference_data(groups, AutoCAVI(groups, tol=1e-12).fit(y), y, num_samples=20)
    assert idata.attrs["data_plate"] == ""
    cov = 0.64 * torch.eye(3, dtype=torch.float64) + 4.0
    evidence = dist.MultivariateNormal(torch.full((3,), 0.5, dtype=torch.float64), cov)
    exact = float(evidence.log_prob(y.T).sum())
    ratios = idata.sample_stats["lp"].values - idata.sample_stats["log_q"].values
    assert np.abs(ratios - exact).max() < 1e-9


def test_a_plated_latent_autocavi_fitted_as_one_vector_keeps_its_plate_in_the_draws():
    """μ_k in a plate of 3, read whole by every datum (y_n ~ N(Σ μ_k, 1)): AutoCAVI fits μ
    as one vector over the plate, whose q is the exact posterior; its guide draws that
    vector and gives the model's plated site its value. The posterior group holds μ as the
    model declares it, [chain, draw, 3], and not the guide's auxiliary draw, and every
    draw's lp − log_q is the evidence log N(y; 0, I + 3·11ᵀ)."""
    y = torch.tensor([0.4, -0.3, 1.2, 0.8], dtype=torch.float64)

    def summed(y):
        with pyro.plate("k", 3):
            mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu.sum(-1, keepdim=True), 1.0), obs=y)

    fit = AutoCAVI(summed, tol=1e-13).fit(y)
    idata = to_inference_data(summed, fit, y, num_samples=20)
    assert list(idata.posterior.data_vars) == ["mu"] and idata.posterior["mu"].shape == (1, 20, 3)
    cov = torch.eye(4, dtype=torch.float64) + 3.0
    exact = float(dist.MultivariateNormal(torch.zeros(4, dtype=torch.float64), cov).log_prob(y))
    ratios = idata.sample_stats["lp"].values - idata.sample_stats["log_q"].values
    assert np.abs(ratios - exact).max() < 1e-9


def test_a_deterministic_site_is_a_posterior_variable_not_data():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        pyro.deterministic("twice_mu", 2 * mu)
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    def guide(y):
        pyro.sample("mu", dist.Normal(0.3, 0.5))

    idata = to_inference_data(model, guide, torch.tensor([0.1, 0.7]), num_samples=10)
    twice = idata.posterior["twice_mu"].values
    assert np.allclose(twice, 2 * idata.posterior["mu"].values) and twice.shape == (1, 10)
    assert "twice_mu" not in idata.observed_data and "twice_mu" not in idata.log_likelihood


def test_a_deterministic_site_per_datapoint_keeps_its_rows_when_particles_loop():
    """Tester O: with the particles drawn in a loop (a model that cannot broadcast), a
    pyro.deterministic site in the data plate came back [chain, draw, data, 6], 5 of every
    6 rows NaN; vectorized it is [chain, draw, data]. Both are now, and it is |z| of each
    draw."""
    from pyro_vae.traces import VectorizationWarning

    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))

    def looped_model(x):  # z.reshape(x.shape) cannot take the particle dim
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.deterministic("r", z.norm(dim=-1))
            pyro.sample("x", dist.Normal(z.reshape(x.shape), 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.5 * x, 0.7).to_event(1))

    pyro.set_rng_seed(0)
    with pytest.warns(VectorizationWarning):
        idata = to_inference_data(looped_model, guide, x, num_samples=20)
    r, z = idata.posterior["r"], idata.posterior["z"]
    assert r.dims == ("chain", "draw", "data") and r.shape == (1, 20, 6)
    np.testing.assert_allclose(r.values, np.linalg.norm(z.values, axis=-1), rtol=1e-6)


PI_3, MU_3 = torch.tensor([0.2, 0.3, 0.5]), torch.tensor([-4.0, 0.0, 4.0])


def shifted_mixture(x):
    """A global shift s ~ N(0, 2²) and per datapoint z_n ~ Categorical(π), which the model
    sums out by enumeration; x_n ~ N(μ_z + s, 0.5²)."""
    shift = pyro.sample("shift", dist.Normal(0.0, 2.0))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(PI_3), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(MU_3[z] + shift, 0.5), obs=x)


def _within(frequency, probability, draws):
    """Five binomial standard errors (and 1e-3 for probabilities near 0 or 1)."""
    return 5 * (probability * (1 - probability) / draws).sqrt() + 1e-3


def test_a_site_the_model_sums_out_is_drawn_from_its_posterior_and_summed_out_of_the_rest():
    """A mixture whose assignment z the model enumerates and a guide over the global shift
    alone (refused before). Against hand-written closed forms at the fit's own draws of
    the shift s: z's draws from p(z_n | x_n, s), the marginal log p(x_n | s) in
    log_likelihood, lp = log p(x, s) with z summed out, and x̃ drawn at the drawn z."""
    x = torch.tensor([-4.2, 0.3, 3.9, 1.5, -3.0])

    def guide(x):
        pyro.sample("shift", dist.Normal(0.1, 0.3))

    pyro.set_rng_seed(0)
    S = 2000
    idata = to_inference_data(shifted_mixture, guide, x, num_samples=S)
    assert idata.posterior["z"].dims == ("chain", "draw", "data")
    s = torch.tensor(idata.posterior["shift"].values[0])[:, None]  # [S, 1]
    z = torch.tensor(idata.posterior["z"].values[0])  # [S, N]
    joint = PI_3.log()[:, None, None] + dist.Normal(MU_3[:, None, None] + s, 0.5).log_prob(x)
    marginal = torch.logsumexp(joint, 0)  # log p(x_n | s): [S, N]
    # float32 densities: within 1e-5 of their size
    np.testing.assert_allclose(idata.log_likelihood["x"].values[0], marginal, atol=2e-5)
    lp = dist.Normal(0.0, 2.0).log_prob(s[:, 0]) + marginal.sum(-1)
    np.testing.assert_allclose(idata.sample_stats["lp"].values[0], lp.double(), atol=1e-4)
    posterior = (joint - marginal).exp().mean(1)  # E_s p(z_n = c | x_n, s): [3, N]
    for c in range(3):
        frequency = (z == c).double().mean(0)
        assert ((frequency - posterior[c]).abs() <= _within(frequency, posterior[c], S)).all()
    # x̃ ~ N(μ_z + s, 0.5²) at the drawn z: standardized, mean 0 and sd 1 (S·N = 10,000)
    residual = (torch.tensor(idata.posterior_predictive["x"].values[0]) - MU_3[z] - s) / 0.5
    assert abs(residual.mean()) < 5 / math.sqrt(S * len(x))
    assert abs(residual.std() - 1) < 5 / math.sqrt(2 * S * len(x))
    assert az.loo(idata).elpd_loo < 0  # ArviZ reads the pointwise marginal


def test_a_summed_site_whose_child_is_latent_is_weighed_by_that_child_too():
    """Tester O's model: c picks the prior of the latent z, and x reads z alone. Then
    p(c | x_n, z) ∝ π_c N(z; m_c, 1) and log p(x_n | z) = log N(x_n; z, 0.5²), exactly."""
    x = torch.tensor([-2.5, -1.0, 0.0, 0.8, 2.2])
    pi, m = torch.tensor([0.3, 0.7]), torch.tensor([-2.0, 1.0])

    def model(x):
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Categorical(pi), infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(m[c], 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(0.8 * x, 0.6))

    pyro.set_rng_seed(1)
    S = 2000
    idata = to_inference_data(model, guide, x, num_samples=S)
    z = torch.tensor(idata.posterior["z"].values[0])
    c = torch.tensor(idata.posterior["c"].values[0])
    expected = dist.Normal(z, 0.5).log_prob(x)
    np.testing.assert_allclose(idata.log_likelihood["x"].values[0], expected, atol=2e-5)
    weights = pi.log()[:, None, None] + dist.Normal(m[:, None, None], 1.0).log_prob(z)
    posterior = torch.softmax(weights, 0)[1].mean(0)  # E_z p(c = 1 | z): [N]
    frequency = (c == 1).double().mean(0)
    assert ((frequency - posterior).abs() <= _within(frequency, posterior, S)).all()


def test_a_beta_pair_gives_the_models_lp_and_log_q_not_the_beta_objective():
    """Tester AH: with ScaleLatents(3) around the pair, lp and log_q were the β-scaled
    log-densities (−26.97 where the model's is −16.45). The same draws must give the
    unwrapped pair's numbers exactly."""
    from pyro_vae.annealing import ScaleLatents
    from pyro_vae.diagnostics import psis_khat

    x = torch.tensor([1.0, -0.5, 2.0, 0.3])

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(0.3 * x, 0.8))

    results = []
    for m, g in [(model, guide), (ScaleLatents(3.0)(model), ScaleLatents(3.0, True)(guide))]:
        pyro.set_rng_seed(0)
        data = to_inference_data(m, g, x, num_samples=50)
        pyro.set_rng_seed(0)
        results.append((data.sample_stats["lp"].values, data.sample_stats["log_q"].values,
                        psis_khat(m, g, x, num_samples=50)))  # fmt: skip
    (lp, log_q, khat), (lp_beta, log_q_beta, khat_beta) = results
    np.testing.assert_array_equal(lp_beta, lp)
    np.testing.assert_array_equal(log_q_beta, log_q)
    assert khat_beta == khat


def _normal_mean(x, mask):
    mu = pyro.sample("mu", dist.Normal(x.new_tensor(0.0), 1.0))
    pyro.factor("penalty", -0.5 * mu**2)  # a second N(0, 1) prior term, by hand
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(mu, 1.0).mask(mask), obs=x)


def test_masked_out_entries_and_factors_are_no_datapoints_of_az_loo():
    """Tester BH: masked out observations were log-likelihoods of 0 that az.loo counted (15
    datapoints for 10, its se 2.4 times too large), and a pyro.factor was filed as observed
    data with a likelihood, so az.loo refused two likelihoods. The expected loo: ArviZ's
    own PSIS-LOO of the 10 observed rows' log N(x_n; μ_s, 1), computed here from the draws."""
    torch.manual_seed(0)
    x = torch.randn(15, dtype=torch.float64) + 1
    mask = torch.ones(15, dtype=torch.bool)
    mask[[0, 3, 7, 8, 14]] = False

    def guide(x, mask):
        pyro.sample("mu", dist.Normal(x[mask].sum() / 12, (1 / 12) ** 0.5))

    pyro.set_rng_seed(1)
    idata = to_inference_data(_normal_mean, guide, x, mask, num_samples=2000)
    ll = idata.log_likelihood["obs"]
    assert ll.dims == ("chain", "draw", "obs_observed")
    kept = mask.nonzero().squeeze(-1).numpy()
    assert ll["obs_observed"].values.tolist() == kept.tolist()
    mu = torch.as_tensor(idata.posterior["mu"].values[0])
    by_hand = dist.Normal(mu[:, None], 1.0).log_prob(x[kept][None]).numpy()
    np.testing.assert_allclose(ll.values[0], by_hand, rtol=1e-12)
    assert "penalty" not in idata.observed_data and "penalty" not in idata.log_likelihood
    assert "penalty" not in idata.posterior_predictive
    # lp still counts the factor: log N(μ; 0, 1) − μ²/2 + Σ_observed log N(x_n; μ, 1)
    lp = dist.Normal(0.0, 1.0).log_prob(mu) - 0.5 * mu**2 + torch.as_tensor(by_hand).sum(-1)
    np.testing.assert_allclose(idata.sample_stats["lp"].values[0], lp.numpy(), rtol=1e-12)
    loo = az.loo(idata)
    assert loo["n_data_points"] == 10
    ours = az.loo(az.from_dict(posterior={"mu": mu[None].numpy()},
                               log_likelihood={"obs": by_hand[None]}))  # fmt: skip
    assert loo["elpd_loo"] == pytest.approx(ours["elpd_loo"], rel=1e-12)
    assert loo["se"] == pytest.approx(ours["se"], rel=1e-12)
