"""PSIS k̂ against models whose posterior is known in closed form.

- The linear-Gaussian model of ``test_evaluate`` (local latents z_n): a guide with the
  exact posterior's mean and sd x s has per-datapoint ratios with tail shape
  k = 1 − s² for s < 1 and bounded ratios for s ≥ 1.
- A constant added to log p: Pyro's own ``psis_diagnostic`` on the same draws.
- Ratios drawn from known distributions: generalized Pareto tails, and discrete atoms.
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoNormal
from pyro.infer.importance import psis_diagnostic
from pyro.nn import PyroParam

from models.sbn import SBN
from pyro_vae.cavi import BayesianLinearRegression
from pyro_vae.diagnostics.arviz_compat import az
from pyro_vae.diagnostics.draws import variational_guide
from pyro_vae.diagnostics.psis import pareto_khat, psis_khat, psis_khat_per_datapoint
from pyro_vae.plates import data_plate
from tests.pyro_vae.diagnostics.test_inference_data import (
    A0,
    B0,
    LAM0,
    MU_3,
    PI_3,
    regression,
    shifted_mixture,
)
from tests.pyro_vae.test_evaluate import POST_GAIN, SIGMA, B, W, make_guide, model

pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_a_heavy_tail_gets_its_khat_without_arvizs_overflow_warning():
    """Tester CQ: ``diagnose --samples 30000000`` printed ArviZ's "overflow encountered in
    exp" (its fit weighs candidate shapes by 1 / Σ exp(Δ), a weight of 0 where Δ > 709).
    Log-weights t-distributed with 2 degrees of freedom (ratios e^t, with no finite
    moments) reach it at 200,000 draws: k̂ far above 1, the same as ArviZ's own, and no
    warning."""
    import warnings

    log_w = np.random.default_rng(0).standard_t(2, (1, 200_000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        khat = pareto_khat(log_w)
    with np.errstate(over="ignore"):
        expected = az.psislw(log_w, reff=1.0)[1]
    assert khat == pytest.approx(expected, rel=1e-12) and khat[0] > 1


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


def test_bad_input_is_refused_with_the_argument_named(gaussian_x):
    with pytest.raises(ValueError, match="num_samples: 10 is not an integer ≥ 21"):
        psis_khat(model, make_guide(), gaussian_x, num_samples=10)

    def global_mean(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with data_plate(x):
            pyro.sample("x", dist.Normal(mu, 1.0).expand([x.shape[0], 3]).to_event(1), obs=x)

    with pytest.raises(ValueError, match="site 'mu' is outside the per-datapoint plate 'data'"):
        psis_khat_per_datapoint(global_mean, AutoNormal(global_mean), gaussian_x, num_samples=100)
    with pytest.raises(ValueError, match="NaN"):
        pareto_khat(np.array([[0.0] * 30 + [math.nan]]))
    with pytest.raises(ValueError, match=r"round_off: -1.0; expected finite rounding errors ≥ 0"):
        pareto_khat(np.zeros((2, 30)), round_off=-1.0)
    with pytest.raises(ValueError, match=r"round_off: shape \(3,\) does not broadcast .* \(2,\)"):
        pareto_khat(np.zeros((2, 30)), round_off=np.zeros(3))


def test_draws_whose_ratios_pass_half_the_machine_s_memory_are_refused_before_any_work(
    gaussian_x, monkeypatch
):
    """``diagnose --samples 10⁹`` grew until the machine killed it. With a machine of 2 MiB,
    half is 1,048,576 bytes; 20 rows at 96 bytes a ratio are 1,920 bytes a draw, so 546
    draws fit and 547 do not. The model is never run (it raises if it is)."""
    import pyro_vae.checks as checks
    import pyro_vae.diagnostics.psis as psis

    monkeypatch.setattr(checks, "machine_memory", lambda: 2 * 2**20)

    def never_run(x):
        raise AssertionError("the model ran before the draws were checked")

    with pytest.raises(ValueError, match=r"^num_samples: 547 draws of each of 20 rows need "
                       r"about 0.0 GiB .* expected at most 546 \(or fewer rows\)$"):  # fmt: skip
        psis_khat_per_datapoint(never_run, never_run, gaussian_x, num_samples=547)
    psis.check_ratio_memory(546, 20)  # fits


def test_khat_per_datapoint_takes_a_local_guide_and_the_rows_it_was_fitted_to():
    # tester I's F2: the probe ran the bare guide on x[:1], so an autoguide fitted over the
    # local latents failed ("no per-datapoint plate for this batch of 1 rows") and a
    # LocalNormal ("1 rows, but this local guide holds 10"), though the docstring says
    # local guides are taken; there was no rows= either. W has orthogonal columns, so the
    # exact posterior of each z_n is diagonal, N(cov Wᵀ x_n, cov), cov = (I + WᵀW)⁻¹ =
    # diag(1/2, 1/5): an AutoNormal holding it has equal ratios, k̂ = −inf, at the rows given
    from pyro_vae.guides.local_normal import LocalNormal
    from pyro_vae.minibatch import align_autoguide

    W = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T, 1.0).to_event(1), obs=x)

    pyro.clear_param_store()
    guide = AutoNormal(model)
    align_autoguide(guide, "data", -1, 10)  # its per-datapoint parameters for 10 rows, as fit
    guide(x)
    cov = torch.tensor([0.5, 0.2])
    # as AutoNormal declares them (event_dim 1: the rows are subsampled along dim −2)
    guide.locs.z = PyroParam((x @ W) * cov, constraints.real, 1)
    guide.scales.z = PyroParam(cov.sqrt().expand(10, 2).clone(), guide.scale_constraint, 1)
    pyro.set_rng_seed(0)
    assert np.isneginf(psis_khat_per_datapoint(model, guide, x, num_samples=50).khat).all()
    rows = torch.arange(3, 6)
    shown = psis_khat_per_datapoint(model, guide, x[3:6], num_samples=50, rows=rows).khat
    assert shown.shape == (3,) and np.isneginf(shown).all()
    # the same rows read as the first three's parameters: not the posterior, finite k̂
    misread = psis_khat_per_datapoint(model, guide, x[3:6], num_samples=50).khat
    assert np.isfinite(misread).all()
    local = LocalNormal(torch.zeros(10, 2), torch.ones(10, 2))
    assert np.isfinite(psis_khat_per_datapoint(model, local, x, num_samples=50).khat).all()


def test_k_hat_refuses_a_point_mass_on_a_continuous_latent():
    """Tester O: a Delta guide gave k̂ = −∞ ("q exact") on every datapoint and for the
    whole fit: its ratios are constant in z because log q = 0 is no density."""
    x = torch.tensor([[0.5, -1.0, 0.2], [1.5, 0.3, 1.1]])

    def point(x, num_data=None):
        with data_plate(x, num_data):
            pyro.sample("z", dist.Delta((x - B) @ POST_GAIN.T, event_dim=1))

    for khat in (psis_khat, psis_khat_per_datapoint):
        with pytest.raises(ValueError, match=r"guide: it draws the continuous latent site"):
            khat(model, point, x)


def _kept_draws(draws: list, num_samples: int):
    """What a guide calls on its draw to record it in ``draws`` when it is taken under the
    particle plate (its one run there: the sums over the enumerated values replay it)."""

    def keep(value):
        if value.dim() and value.shape[0] == num_samples:
            draws.append(value)
        return value

    return keep


def test_per_datapoint_khat_sums_out_a_site_the_model_enumerates():
    """The log-ratios log p(x_n, u) − log q(u | x_n), with z_n summed out of p, written out
    by hand at the guide's own draws and given to ArviZ's psislw, give the same k̂ (the
    diagnostic used to refuse this model: z is a Categorical no AutoNormal can draw)."""
    x = torch.tensor([-4.2, 0.3, 3.9, 1.5])

    def mixture(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(PI_3), infer={"enumerate": "parallel"})
            u = pyro.sample("u", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(MU_3[z] + u, 0.5), obs=x)

    draws = []
    keep = _kept_draws(draws, 1000)

    def guide(x):
        with pyro.plate("data", len(x)):
            keep(pyro.sample("u", dist.Normal(0.1 * x, 0.7)))

    pyro.set_rng_seed(0)
    khat = psis_khat_per_datapoint(mixture, guide, x, num_samples=1000).khat
    (u,) = draws  # [S, N]
    components = dist.Normal(MU_3[:, None, None] + u, 0.5).log_prob(x) + PI_3.log()[:, None, None]
    log_p = dist.Normal(0.0, 1.0).log_prob(u) + torch.logsumexp(components, 0)
    log_w = (log_p - dist.Normal(0.1 * x, 0.7).log_prob(u)).double().T.numpy()
    _, expected = az.psislw(log_w, 1.0)
    # float32 log-densities summed in another order: k̂ moves by ~1e-5 (a shift of ε in
    # the log-weights of the fitted tail)
    np.testing.assert_allclose(khat, expected, atol=1e-3)


def test_joint_khat_sums_out_a_local_site_the_model_enumerates_beside_a_global_one():
    """A global shift and a per-datapoint z summed out: log p(x, s) = log p(s) +
    Σ_n log Σ_z π_z N(x_n; μ_z + s, σ²) by hand at the guide's draws, through psislw."""
    x = torch.tensor([-4.2, 0.3, 3.9, 1.5, -3.0])

    draws = []
    keep = _kept_draws(draws, 1000)

    def guide(x):
        keep(pyro.sample("shift", dist.Normal(0.1, 0.3)))

    pyro.set_rng_seed(0)
    khat = psis_khat(shifted_mixture, guide, x, num_samples=1000)
    s = draws[0].reshape(-1, 1)
    components = dist.Normal(MU_3[:, None, None] + s, 0.5).log_prob(x) + PI_3.log()[:, None, None]
    log_p = dist.Normal(0.0, 2.0).log_prob(s[:, 0]) + torch.logsumexp(components, 0).sum(-1)
    log_w = (log_p - dist.Normal(0.1, 0.3).log_prob(s[:, 0])).double().numpy()
    _, expected = az.psislw(log_w, 1.0)
    assert khat == pytest.approx(float(expected), abs=1e-3)

    def tied(x):  # a global site that reads every z: no per-datapoint sum can hold it
        shift = pyro.sample("shift", dist.Normal(0.0, 2.0))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(PI_3), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(MU_3[z] + shift, 0.5), obs=x)
        pyro.sample("count", dist.Normal(z.float().sum(-1, keepdim=True), 1.0), obs=torch.ones(1))

    with pytest.raises(ValueError, match="site 'count' lies outside the per-datapoint plate"):
        psis_khat(tied, guide, x, num_samples=50)

    def subsampled(x):  # each run per value would score rows of its own
        shift = pyro.sample("shift", dist.Normal(0.0, 2.0))
        with pyro.plate("data", len(x), subsample_size=3) as rows:
            z = pyro.sample("z", dist.Categorical(PI_3), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(MU_3[z] + shift, 0.5), obs=x[rows])

    with pytest.raises(ValueError, match="subsample"):
        psis_khat(subsampled, guide, x, num_samples=50)


def _scaled_alike(model, guide, scale):
    return pyro.poutine.scale(model, scale=scale), pyro.poutine.scale(guide, scale=scale)


def test_khat_of_a_pair_scaled_alike_is_the_pairs():
    """A scale c common to every site of model and guide (poutine.scale(c) around both)
    weighs the objective, not the densities: k̂ is of the ratios r, on the same draws, where
    folded in it was of r^c, a tail c times as heavy (builder L's L1)."""
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0)) @ W.T + B
    guide = make_guide(1.0, 0.6)  # k = 1 − 0.36 = 0.64 per datapoint
    results = {}
    for c in (1.0, 3.0):
        pyro.set_rng_seed(0)
        pointwise = psis_khat_per_datapoint(*_scaled_alike(model, guide, c), x, num_samples=200)
        pyro.set_rng_seed(0)
        joint = psis_khat(*_scaled_alike(model, guide, c), x, num_samples=200)
        results[c] = (pointwise.khat, joint)
    np.testing.assert_allclose(results[3.0][0], results[1.0][0], rtol=1e-4)
    assert results[3.0][1] == pytest.approx(results[1.0][1], rel=1e-4)  # float32 log w


def test_exact_answers_of_a_discrete_pair_scaled_alike_put_c_on_the_nats_only():
    """States enumerated under poutine.scale(3) around both: log q was 3 log q and the
    states' mass was refused as not summing to 1. Now log p(x_n) and the KL, in nats, are
    3 × the unscaled pair's and χ², a ratio, is the pair's."""
    x = torch.tensor([-1.0, 0.2, 1.5, 3.0], dtype=torch.float64)

    def bernoulli_model(x):
        with data_plate(x):
            z = pyro.sample("z", dist.Bernoulli(torch.tensor(0.3, dtype=torch.float64)))
            pyro.sample("x", dist.Normal(2.0 * z, 1.0), obs=x)

    def bernoulli_guide(x):
        with data_plate(x):
            pyro.sample("z", dist.Bernoulli(logits=x))

    plain = psis_khat_per_datapoint(bernoulli_model, bernoulli_guide, x, num_samples=30)
    scaled = psis_khat_per_datapoint(
        *_scaled_alike(bernoulli_model, bernoulli_guide, 3.0), x, num_samples=30
    )
    states = torch.tensor([0.0, 1.0], dtype=torch.float64)[:, None]
    joint = dist.Bernoulli(0.3).log_prob(states) + dist.Normal(2.0 * states, 1.0).log_prob(x)
    exact = torch.logsumexp(joint, 0).numpy()  # log p(x_n) = log Σ_z p(z) N(x_n; 2z, 1)
    assert scaled.num_states == plain.num_states == 2
    np.testing.assert_allclose(plain.log_evidence, exact, rtol=1e-6)  # float32 terms
    np.testing.assert_allclose(scaled.log_evidence, 3.0 * exact, rtol=1e-6)
    np.testing.assert_allclose(scaled.kl, 3.0 * plain.kl, rtol=1e-10)
    np.testing.assert_allclose(scaled.chi2, plain.chi2, rtol=1e-10)


def test_the_summary_reports_the_share_above_the_sample_size_threshold():
    """Tester CI: at S = 21 draws every k̂ (median 0.35, max 0.48) was above the threshold
    for that many draws, min(1 - 1/log10 S, 0.7) = 0.24 (Vehtari et al. 2024), while the
    summary said "share above 0.7: 0%". Expected: the threshold and the share above it,
    computed by hand here."""
    from pyro_vae.diagnostics.psis import PointwiseKhat

    summary = PointwiseKhat(np.array([0.1, 0.3, 0.35, 0.48, np.nan]), 21).summary()
    assert summary["khat_threshold"] == pytest.approx(1 - 1 / np.log10(21))  # 0.2437
    assert summary["share_above_threshold"] == 0.75  # 3 of the 4 defined k̂
    assert summary["share_above_0.7"] == 0.0
    assert PointwiseKhat(np.zeros(3), 10**4).summary()["khat_threshold"] == 0.7


def test_psis_khat_refuses_non_finite_data_by_count_and_row():
    """Tester FK: NaN in the data failed in Pyro's constraint check on the encoder's loc."""
    from models.vae import VAE

    vae = VAE(8, latent_dim=2, hidden_dims=(8,))
    x = torch.rand(5, 8, generator=torch.Generator().manual_seed(0)).round()
    x[2, 3] = float("inf")
    with pytest.raises(ValueError, match=r"args: 1 of its 40 entries are NaN or infinite \(the "
                       r"first in row 2\); expected finite values"):  # fmt: skip
        psis_khat(vae, vae.make_guide(), x, num_samples=30)
