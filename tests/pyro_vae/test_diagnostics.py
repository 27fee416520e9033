"""ArviZ conversion and PSIS k̂ against models whose posterior is known in closed form.

- Normal-Gamma Bayesian linear regression (global latents w, τ): the exact posterior and
  log p(y) come from :class:`pyro_vae.cavi.BayesianLinearRegression`, so with the exact
  posterior as the guide every draw has lp − log_q = log p(y), and the CAVI fit's
  mean(lp − log_q) is its closed-form ELBO.
- The linear-Gaussian model of ``test_evaluate`` (local latents z_n): a guide with the
  exact posterior's mean and sd x s has per-datapoint ratios with tail shape
  k = 1 − s² for s < 1 and bounded ratios for s ≥ 1.
- A constant added to log p: Pyro's own ``psis_diagnostic`` on the same draws.
- A sigmoid belief net with 3 binary latents: its 2³ states enumerated by hand.
"""

import itertools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
from pyro.infer.importance import psis_diagnostic

from models.sbn import SBN
from models.vae import VAE
from pyro_vae.cavi import BayesianLinearRegression
from pyro_vae.diagnostics import (
    FORMAT,
    az,
    load_inference_data,
    pareto_khat,
    psis_khat,
    psis_khat_per_datapoint,
    save_inference_data,
    to_inference_data,
    variational_guide,
    write_report,
)
from pyro_vae.plates import data_plate
from tests.pyro_vae.test_evaluate import SIGMA, B, W, make_guide, model

A0, B0, LAM0 = 2.0, 2.0, 1.0
N, D = 40, 3


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


@pytest.fixture
def data():
    X = torch.randn(N, D, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.7 * torch.randn(N).double()
    return X, y


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


@pytest.fixture
def gaussian_x():
    return dist.MultivariateNormal(B, W @ W.T + SIGMA**2 * torch.eye(3)).sample((20,))


def test_khat_direction_on_the_conjugate_model(gaussian_x):
    x = gaussian_x
    # The exact guide: every ratio equals p(x), so no tail; k̂ is −inf by convention.
    assert psis_khat(model, make_guide(), x, num_samples=1000) == -math.inf
    assert (psis_khat_per_datapoint(model, make_guide(), x, 1000).khat == -math.inf).all()
    # Scale 0.5x: joint ratios over 40 latent dims are very heavy-tailed (k̂ from 1.34 to
    # 1.91 over 8 seeds at S = 1000), far above 0.7.
    assert psis_khat(model, make_guide(1.0, 0.5), x, num_samples=1000) > 0.7
    # Per datapoint the tail shape is k = 1 − s²: 0.91 at s = 0.3, 0.75 at 0.5, 0.36 at
    # 0.8, and bounded ratios (k < 0) at 1.2. Medians over 20 datapoints at S = 4000
    # over 8 seeds: 0.80-1.01, 0.66-0.79, 0.2-0.5, below -0.69.
    medians = {}
    for s in (0.3, 0.5, 0.8, 1.2):
        khat = psis_khat_per_datapoint(model, make_guide(1.0, s), x, num_samples=4000)
        medians[s] = float(np.median(khat.khat))
        if s == 1.2:
            assert khat.khat.max() < 0.0 and khat.share_above(0.5) == 0.0
    assert medians[0.3] > 0.7 and medians[0.5] > 0.5
    assert medians[0.3] > medians[0.5] > medians[0.8] > medians[1.2]


def test_pareto_khat_recovers_a_known_tail_shape():
    rng = np.random.default_rng(0)
    # Ratios r = U^(−k) are exactly generalized Pareto with shape k. PSIS fits the top
    # 3√S = 424 of S = 20000; the per-row sd of k̂ is 0.06-0.09 (100 rows each),
    # so the mean of 20 rows is within 0.08 (4 standard errors).
    for k in (0.3, 0.8):
        log_r = -k * np.log(rng.uniform(size=(20, 20000)))
        assert abs(pareto_khat(log_r).mean() - k) < 0.08
    bounded = np.log(rng.uniform(size=(5, 2000)))  # r = U ≤ 1: shape −1
    assert (pareto_khat(bounded) < 0).all()
    assert pareto_khat(np.full((2, 50), -3.0)).tolist() == [-math.inf, -math.inf]


def test_pareto_khat_does_not_change_when_a_constant_is_added_to_the_log_weights():
    rng = np.random.default_rng(1)
    tails = -0.5 * np.log(rng.uniform(size=(10, 2000)))  # generalized Pareto, k = 0.5
    flat = -3.0 + 1e-5 * rng.standard_normal((2, 2000))  # constant up to 1e-4 nats
    log_w = np.concatenate([tails, flat])
    reference = pareto_khat(log_w)
    assert np.isfinite(reference[:10]).all() and (reference[10:] == -math.inf).all()
    for c in (0.0, 1e3, 1e6):
        # float64: log w + c is rounded to half an ulp of c (6e-11 at 1e6), which moves each
        # ratio by that relative amount; measured |Δk̂| ≤ 1.5e-10.
        np.testing.assert_allclose(pareto_khat(log_w + c), reference, rtol=0, atol=1e-8)
    # float32 holds log w + c only to half an ulp of c: 3e-5 nats at c = 1e3, a 3e-5
    # relative change of each ratio (measured |Δk̂| = 1.0e-4)...
    shifted = pareto_khat((log_w + 1e3).astype(np.float32))
    np.testing.assert_allclose(shifted, reference, rtol=0, atol=1e-3)
    # ...but 0.031 nats at c = 1e6: every ratio is off by up to 3%, which moves k̂ by up
    # to 0.2 (measured), so float32 allows no comparison there. What it does allow: tails
    # spread over nats are far from constant at that precision, and the flat rows, whose
    # spread is below one float32 step, are constant.
    shifted = pareto_khat((log_w + 1e6).astype(np.float32))
    assert np.isfinite(shifted[:10]).all() and (shifted[10:] == -math.inf).all()


def test_psis_khat_with_a_large_constant_in_log_p_is_pyros_on_the_same_draws(data, gaussian_x):
    def with_factor(model, c):
        def shifted(*args):
            model(*args)
            pyro.factor("big", torch.tensor(c, dtype=args[0].dtype))

        return shifted

    def pyros(model, guide, *args):
        # psis_khat runs the guide once to read the plate nesting before its S draws
        pyro.poutine.trace(guide).get_trace(*args)
        return psis_diagnostic(model, guide, *args, num_particles=1000, max_plate_nesting=1)

    # A float64 model: Pyro's log-weights carry the constant to 1e-10 nats, and it fits
    # the same generalized Pareto as az.psislw (Zhang & Stephens 2009, the same prior on
    # k); they differ only in which tiny quadrature weights they drop (measured 2e-16).
    X, y = data
    guide = variational_guide(
        BayesianLinearRegression(A0, B0, LAM0).fit(X, y).variational_distributions()
    )
    big = with_factor(regression, 1e6)
    pyro.set_rng_seed(3)
    khat = psis_khat(big, guide, X, y)
    pyro.set_rng_seed(3)
    assert khat == pytest.approx(pyros(big, guide, X, y), abs=1e-6)
    pyro.set_rng_seed(3)
    assert khat == pytest.approx(psis_khat(regression, guide, X, y), abs=1e-8)
    assert 0.2 < khat < 0.7  # mean-field q(w) q(τ) of a joint posterior: a real tail

    # A float32 model, its guide's sd 0.9x the posterior's (ratios spread over a few nats):
    # Pyro sums the factor into float32 log-weights, rounding each to 0.0625 nats at 1e6
    # (its k̂ here: 0.24, against 0.36 without the constant), so the reference is Pyro's
    # k̂ without the constant, which cannot change k̂. Its log-weights are float32 sums of
    # ~100 nats, good to ~1e-5, and its k̂ agreed with ours to 5e-6 (measured).
    guide = make_guide(1.0, 0.9)
    pyro.set_rng_seed(4)
    khat = psis_khat(with_factor(model, 1e6), guide, gaussian_x)
    pyro.set_rng_seed(4)
    assert khat == pytest.approx(pyros(model, guide, gaussian_x), abs=1e-4)

    # Per datapoint, a constant in the data plate: each datapoint's sites are added in
    # float64, so the shift is exact (measured Δk̂ = 0).
    def local_factor(x, c):
        with data_plate(x):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).expand([len(x), 2]).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + B, SIGMA).to_event(1), obs=x)
            pyro.factor("big", torch.full((len(x),), c))

    khats = []
    for c in (0.0, 1e6):
        pyro.set_rng_seed(5)
        khats.append(
            psis_khat_per_datapoint(lambda x, c=c: local_factor(x, c), guide, gaussian_x, 500).khat
        )
    assert np.isfinite(khats[0]).all()
    np.testing.assert_allclose(khats[1], khats[0], rtol=0, atol=1e-8)


def _sbn_by_hand(sbn, guide, x):
    """log p(x_n, z) and log q(z | x_n) at each of the 2^J states z, ``[2^J, N]``, in float64
    from the SBN's prior, decoder and guide network, without Pyro."""
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=sbn.latent_dim)))
    with torch.no_grad():
        log_prior = dist.Bernoulli(logits=sbn.prior_logits.double()).log_prob(states.double())
        logits = sbn.decoder(states).double()[:, None, :]
        log_lik = dist.Bernoulli(logits=logits).log_prob(x.double()).sum(-1)
        q_logits = guide.net(x).double()
        log_q = dist.Bernoulli(logits=q_logits).log_prob(states.double()[:, None, :]).sum(-1)
    return log_prior.sum(-1)[:, None] + log_lik, log_q


def test_a_discrete_guide_with_few_states_is_enumerated_exactly(tmp_path):
    pyro.set_rng_seed(6)
    sbn = SBN(16, latent_dim=3)
    guide = sbn.make_guide()
    for net in (sbn.decoder, guide.net):  # away from the initial weights, as after a fit
        for param in net.parameters():
            param.data += 0.5 * torch.randn_like(param)
    x = torch.bernoulli(torch.full((30, 16), 0.3))
    result = psis_khat_per_datapoint(sbn, guide, x, num_samples=100)
    # 8 states ≤ 100 draws: enumerated. 8 ratios, bounded, with an atom on top: no k̂.
    assert result.num_states == 8 and np.isnan(result.khat).all()
    log_joint, log_q = _sbn_by_hand(sbn, guide, x)
    log_evidence = torch.logsumexp(log_joint, 0)
    log_post = log_joint - log_evidence
    kl = (log_q.exp() * (log_q - log_post)).sum(0)
    chi2 = (torch.exp(2 * log_post - log_q)).sum(0) - 1
    # Ours: float32 log-densities of ~22 terms of a few nats each, summed in another
    # order: within 2 ε Σ|terms| ≈ 2e-5 (measured 7e-7); χ² = E_q[(r / p(x))²] − 1
    # inherits twice that as a relative error of 1 + χ².
    np.testing.assert_allclose(result.log_evidence, log_evidence.numpy(), rtol=0, atol=2e-5)
    np.testing.assert_allclose(result.kl, kl.numpy(), rtol=0, atol=4e-5)
    np.testing.assert_allclose(result.chi2, chi2.numpy(), rtol=1e-4, atol=4e-5)
    summary = result.summary(num_worst=3)
    assert summary["khat_not_applicable"] == 30 and math.isnan(summary["share_above_0.7"])
    assert summary["num_states"] == 8
    assert [w["index"] for w in summary["worst"]] == torch.argsort(-chi2)[:3].tolist()

    report = write_report(
        sbn,
        guide,
        x,
        tmp_path,
        num_samples=100,
        idata_points=5,
        idata_samples=20,
        num_worst=4,
        image_shape=(4, 4),
    )
    assert report["chi2_max"] == pytest.approx(float(chi2.max()), rel=1e-4)
    rows = (tmp_path / "khat.csv").read_text().splitlines()
    assert rows[0] == "index,khat,log_evidence,kl,chi2" and len(rows) == 31
    assert float(rows[1].split(",")[2]) == pytest.approx(float(log_evidence[0]), abs=1e-4)
    assert (tmp_path / "khat_worst.png").stat().st_size > 1000


def test_discrete_ratios_get_no_pareto_fit():
    rng = np.random.default_rng(2)
    # Ratios of a q with 5 states: k̂ is NaN whichever way the ties fall.
    atoms = np.log([0.1, 0.5, 1.0, 2.0, 10.0])
    few = atoms[rng.choice(5, size=(6, 1000), p=[0.3, 0.3, 0.2, 0.1, 0.1])]
    assert np.isnan(pareto_khat(few, discrete=True)).all()
    # Even unflagged: with 10% of the draws on the top atom, the tail holds one distinct
    # value; az.psislw answers +inf (nothing above a cutoff tied with the top atom) or
    # fits the repeated top atom alone (k̂ = −5.5 here).
    psislw = az.psislw(few, reff=1.0)[1]
    assert np.isposinf(psislw).any() and (psislw < -1).any()
    assert np.isnan(pareto_khat(few)).all()
    # Ratios on 10¹² states, or continuous: distinct, so the flag changes nothing.
    many = np.log(rng.integers(1, 10**12, size=(4, 1000)).astype(float))
    tails = -0.5 * np.log(rng.uniform(size=(4, 1000)))
    for log_w in (many, tails):
        np.testing.assert_array_equal(pareto_khat(log_w, discrete=True), pareto_khat(log_w))
        assert np.isfinite(pareto_khat(log_w)).all()
    # A tail of 4 draws 1000 nats above the rest is infinitely heavy, not tied: +inf.
    heavy = np.full((1, 100), -1000.0)
    heavy[0, :4] = [0.0, -1.0, -2.0, -3.0]
    assert np.isposinf(az.psislw(heavy, reff=1.0)[1]).all()
    assert np.isposinf(pareto_khat(heavy, discrete=True)).all()


def test_discrete_guides_without_enumeration():
    # A global q over 4 categories: 4 ≤ S states, so psis_khat has no tail to fit.
    x = torch.tensor([0.1, 1.9, 2.2, 0.4])
    means = torch.tensor([0.0, 1.0, 2.0, 3.0])

    def mixture(x):
        z = pyro.sample("z", dist.Categorical(logits=torch.zeros(4)))
        with data_plate(x):
            pyro.sample("x", dist.Normal(means[z], 1.0), obs=x)

    def guide(x):
        pyro.sample("z", dist.Categorical(probs=torch.tensor([0.1, 0.2, 0.6, 0.1])))

    assert math.isnan(psis_khat(mixture, guide, x, num_samples=200))
    # 2⁸ = 256 states per datapoint > S = 100 draws: drawn, and a datapoint whose draws
    # repeat a ratio in the fitted tail gets NaN, never the ±inf of a GPD fit to ties.
    pyro.set_rng_seed(7)
    sbn = SBN(16, latent_dim=8)
    x = torch.bernoulli(torch.full((40, 16), 0.3))
    result = psis_khat_per_datapoint(sbn, sbn.make_guide(), x, num_samples=100)
    assert result.num_states == 0 and not np.isinf(result.khat).any()
    assert np.isnan(result.khat).any()  # q near uniform: 100 draws of 256 states repeat
    defined = result.khat[~np.isnan(result.khat)]
    assert result.share_above(0.7) == pytest.approx((defined > 0.7).mean())


def test_summary_names_the_worst_datapoints(gaussian_x):
    x = gaussian_x.clone()
    x[7] = 20.0  # far from the data; the 0.5x guide's ratios get heavier there
    khat = psis_khat_per_datapoint(model, make_guide(1.0, 0.5), x, num_samples=500)
    summary = khat.summary(num_worst=3)
    assert summary["num_points"] == 20 and summary["num_samples"] == 500
    assert [w["khat"] for w in summary["worst"]] == sorted(khat.khat, reverse=True)[:3]
    assert summary["share_above_0.7"] == pytest.approx((khat.khat > 0.7).mean())


def test_write_report_for_an_image_model(tmp_path):
    vae = VAE(x_dim=16, latent_dim=2, hidden_dims=(8,))
    x = torch.bernoulli(torch.full((30, 16), 0.3))
    result = write_report(
        vae,
        vae.make_guide(),
        x,
        tmp_path,
        num_samples=50,
        idata_points=10,
        idata_samples=20,
        num_worst=4,
        image_shape=(4, 4),
    )
    names = {"khat.csv", "khat.png", "khat_worst.png", "diagnostics.nc", "summary.csv"}
    assert names | {"posterior.png", "ppc.png"} == {p.name for p in tmp_path.iterdir()}
    assert len((tmp_path / "khat.csv").read_text().splitlines()) == 31
    assert len(result["worst"]) == 4 and 0 <= result["share_above_0.7"] <= 1
    assert load_inference_data(tmp_path / "diagnostics.nc").posterior["z"].shape == (1, 20, 10, 2)


def test_bad_input_is_refused_with_the_argument_named(data, gaussian_x, tmp_path):
    X, y = data

    def guide_without_tau(X, y):
        pyro.sample("weights", dist.Normal(torch.zeros(D), 1.0).to_event(1))

    with pytest.raises(ValueError, match=r"latent site\(s\) \['precision'\]"):
        to_inference_data(regression, guide_without_tau, X, y, num_samples=10)
    with pytest.raises(ValueError, match="num_samples: 1 is not an integer ≥ 2"):
        to_inference_data(model, make_guide(), gaussian_x, num_samples=1)
    with pytest.raises(ValueError, match="num_samples: 10 is not an integer ≥ 21"):
        psis_khat(model, make_guide(), gaussian_x, num_samples=10)

    def global_mean(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with data_plate(x):
            pyro.sample("x", dist.Normal(mu, 1.0).expand([x.shape[0], 3]).to_event(1), obs=x)

    with pytest.raises(ValueError, match="site 'mu' is outside the per-datapoint plate 'data'"):
        psis_khat_per_datapoint(global_mean, AutoNormal(global_mean), gaussian_x, num_samples=100)
    with pytest.raises(ValueError, match="not fitted"):
        to_inference_data(regression, BayesianLinearRegression(), X, y)
    with pytest.raises(ValueError, match="NaN"):
        pareto_khat(np.array([[0.0] * 30 + [math.nan]]))
    with pytest.raises(ValueError, match=r"round_off: -1.0; expected finite rounding errors ≥ 0"):
        pareto_khat(np.zeros((2, 30)), round_off=-1.0)
    with pytest.raises(ValueError, match=r"round_off: shape \(3,\) does not broadcast .* \(2,\)"):
        pareto_khat(np.zeros((2, 30)), round_off=np.zeros(3))

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
