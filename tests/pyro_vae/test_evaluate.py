"""The evaluator against a linear-Gaussian model where everything is known in closed form.

    z ~ N(0, I_2),  x | z ~ N(W z + b, σ² I_3)   ⇒   x ~ N(b, W Wᵀ + σ² I)

W has orthogonal columns, so the posterior N(μ(x), Σ) has diagonal Σ = (I + WᵀW/σ²)⁻¹ and
an amortized diagonal Normal guide can equal it exactly. For any guide
q(z|x) = N(A(x − b), diag s²): ELBO(x) = log p(x) − KL(q ‖ p(z|x)), in closed form.
"""

import functools
import math
import warnings

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from pyro_vae.annealing import ScaleLatents
from pyro_vae.evaluate import (
    _iwae_rows,
    elbo_estimate,
    elbo_per_datapoint,
    elbo_terms_per_datapoint,
    iwae_log_likelihood,
    log_importance_weights,
    max_plate_nesting,
)
from pyro_vae.plates import DataPlateError, data_plate

F64 = torch.float64

SIGMA = 0.5
W = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
B = torch.tensor([0.5, -1.0, 0.2])
POST_VAR = 1.0 / (1.0 + (W * W).sum(0) / SIGMA**2)
POST_GAIN = POST_VAR[:, None] * W.T / SIGMA**2  # μ(x) = POST_GAIN (x − b)


def model(x, num_data=None):
    with data_plate(x, num_data):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).expand([x.shape[0], 2]).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T + B, SIGMA).to_event(1), obs=x)


def make_guide(gain_factor=1.0, scale_factor=1.0):
    def guide(x, num_data=None):
        loc = (x - B) @ (gain_factor * POST_GAIN).T
        scale = scale_factor * POST_VAR.sqrt().expand_as(loc)
        with data_plate(x, num_data):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return guide


def exact_log_likelihood(x):
    cov = W @ W.T + SIGMA**2 * torch.eye(3)
    return dist.MultivariateNormal(B, cov).log_prob(x)


def exact_elbo(x, gain_factor, scale_factor):
    mu = (x - B) @ POST_GAIN.T
    q = dist.Normal(gain_factor * mu, scale_factor * POST_VAR.sqrt())
    post = dist.Normal(mu, POST_VAR.sqrt())
    return exact_log_likelihood(x) - torch.distributions.kl_divergence(q, post).sum(-1)


@pytest.fixture
def x():
    return dist.MultivariateNormal(B, W @ W.T + SIGMA**2 * torch.eye(3)).sample((20,))


def test_weights_have_particle_by_datapoint_shape(x):
    assert max_plate_nesting(model, make_guide(), x) == 1
    assert log_importance_weights(model, make_guide(), x, 7).shape == (7, 20)


def test_exact_guide_gives_log_likelihood_with_zero_variance(x):
    lw = log_importance_weights(model, make_guide(), x, 50)
    torch.testing.assert_close(lw, exact_log_likelihood(x).expand(50, -1), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        iwae_log_likelihood(model, make_guide(), x, 100), exact_log_likelihood(x), atol=1e-4, rtol=0
    )


def test_elbo_matches_closed_form_within_monte_carlo_error(x):
    guide = make_guide(0.5, 0.6)
    lw = log_importance_weights(model, guide, x, 4000)
    estimate, se = lw.mean(0), lw.std(0) / math.sqrt(lw.shape[0])
    truth = exact_elbo(x, 0.5, 0.6)
    # 4 standard errors per datapoint: a false alarm somewhere in 20 points has p < 2e-3.
    assert ((estimate - truth).abs() < 4 * se + 1e-4).all()
    assert (truth < exact_log_likelihood(x) - 0.1).all()  # the gap is real


def test_elbo_terms_kl_matches_the_closed_form_within_monte_carlo_error(x):
    # One draw per row on 200 copies of each of the 20 points: 200 independent estimates of
    # each point's KL(q(z | x_n) ‖ N(0, I)), whose spread gives the standard error.
    guide = make_guide(0.5, 0.6)
    pyro.set_rng_seed(1)
    terms = elbo_terms_per_datapoint(model, guide, x.repeat(200, 1), num_samples=1)
    kl = terms.kl.reshape(200, 20)
    estimate, se = kl.mean(0), kl.std(0) / math.sqrt(200)
    q = dist.Normal(0.5 * (x - B) @ POST_GAIN.T, 0.6 * POST_VAR.sqrt())
    truth = torch.distributions.kl_divergence(q, dist.Normal(0.0, 1.0)).sum(-1)
    # 4 standard errors per datapoint: a false alarm somewhere in 20 points has p < 2e-3.
    assert ((estimate - truth).abs() < 4 * se).all()


def test_elbo_terms_add_up_to_the_elbo_of_the_same_draws(x):
    guide = make_guide(0.5, 0.6)
    pyro.set_rng_seed(2)
    terms = elbo_terms_per_datapoint(model, guide, x, num_samples=7, batch_size=6)
    pyro.set_rng_seed(2)
    elbo = elbo_per_datapoint(model, guide, x, num_samples=7, batch_size=6)
    # the same draws; the two sums differ only in float32 rounding of ~|log p| ≈ 10 nats
    torch.testing.assert_close(terms.log_likelihood - terms.kl, elbo, atol=1e-4, rtol=0)
    assert terms.log_likelihood.shape == terms.kl.shape == (20,)


def test_iwae_increases_with_k_towards_log_likelihood(x):
    # An overdispersed guide (scale 1.5x the posterior's) keeps the weights bounded, so the
    # K-sample bound's gap shrinks like Var(w)/(2K) and is resolvable at small K.
    guide = make_guide(0.8, 1.5)
    repeats = x.repeat(300, 1)  # 6,000 independent estimates per K
    truth = exact_log_likelihood(repeats)
    means, ses = [], []
    for k in (1, 3, 10, 30):
        residual = iwae_log_likelihood(model, guide, repeats, k) - truth
        means.append(residual.mean().item())
        ses.append(residual.std().item() / math.sqrt(residual.numel()))
    elbo_gap = (exact_elbo(x, 0.8, 1.5) - exact_log_likelihood(x)).mean().item()
    assert means[0] == pytest.approx(elbo_gap, abs=4 * ses[0])  # K = 1 is the ELBO
    for i in range(3):  # each step up in K is better by more than 4 standard errors
        assert means[i + 1] - means[i] > 4 * math.hypot(ses[i], ses[i + 1])
    assert means[-1] < 4 * ses[-1]  # still a lower bound
    residual = iwae_log_likelihood(model, guide, x, 5000) - exact_log_likelihood(x)
    se = residual.std().item() / math.sqrt(residual.numel())
    assert residual.mean().item() < 4 * se
    assert abs(residual.mean().item()) < 0.02 * abs(elbo_gap)  # K = 5000 closes the gap


def test_iwae_is_bounded_by_log_likelihood_for_an_underdispersed_guide(x):
    guide = make_guide(0.5, 0.6)
    log_p = exact_log_likelihood(x)
    bounds = iwae_log_likelihood(model, guide, x, 1000)
    assert (bounds.mean() < log_p.mean()).item()
    assert (bounds.mean() > exact_elbo(x, 0.5, 0.6).mean()).item()


def test_chunked_log_sum_exp_is_exact(x):
    # With the exact guide every weight equals p(x), so any chunking must return log p(x).
    chunked = iwae_log_likelihood(model, make_guide(), x, 37, batch_size=7, max_elements=10)
    torch.testing.assert_close(chunked, exact_log_likelihood(x), atol=1e-4, rtol=0)


def test_chunking_does_not_change_the_estimand(x):
    guide = make_guide(0.8, 1.5)
    repeats = x.repeat(50, 1)
    whole = iwae_log_likelihood(model, guide, repeats, 64, max_elements=10**9)
    # batches of 20 rows of 3 numbers, 7 particles a chunk: nine chunks and a last of one
    chunked = iwae_log_likelihood(model, guide, repeats, 64, batch_size=20, max_elements=7 * 60)
    # Independent draws of the same K=64 estimator on the same points: paired differences
    # have mean zero; 4 standard errors of their mean.
    diff = whole - chunked
    assert abs(diff.mean().item()) < 4 * diff.std().item() / math.sqrt(diff.numel())


def test_elbo_per_datapoint_averages_particles(x):
    estimates = elbo_per_datapoint(model, make_guide(0.5, 0.6), x, num_samples=2000)
    assert estimates.shape == (20,)
    assert (estimates - exact_elbo(x, 0.5, 0.6)).abs().max() < 0.2


def test_sites_outside_the_data_plate_are_refused(x):
    def global_model(x, num_data=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with data_plate(x, num_data):
            pyro.sample("x", dist.Normal(mu, 1.0).expand([x.shape[0], 3]).to_event(1), obs=x)

    def global_guide(x, num_data=None):
        pyro.sample("mu", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="site 'mu' is outside the per-datapoint plate 'data'"):
        elbo_per_datapoint(global_model, global_guide, x)


def test_bad_counts_are_rejected(x):
    with pytest.raises(ValueError, match="num_samples: 0"):
        iwae_log_likelihood(model, make_guide(), x, 0)
    with pytest.raises(ValueError, match="batch_size: -1"):
        elbo_per_datapoint(model, make_guide(), x, batch_size=-1)


def test_elbo_estimate_sums_out_enumerated_sites_and_reports_its_error():
    import pyro.distributions as dist

    from pyro_vae.evaluate import elbo_estimate
    from pyro_vae.guides import EmptyGuide

    # x | z ~ N(2z, 1), z ~ Bernoulli(0.3) enumerated: the "ELBO" of an empty guide is the
    # exact log p(x) = log Σ_z p(z) N(x; 2z, 1), with no Monte Carlo error.
    x = torch.tensor([0.5, 1.7, -0.2])

    def model(x, num_data=None):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Bernoulli(0.3), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(2 * z, 1.0), obs=x)

    exact = torch.logsumexp(
        torch.stack(
            [
                math.log(0.7) + dist.Normal(0.0, 1.0).log_prob(x),
                math.log(0.3) + dist.Normal(2.0, 1.0).log_prob(x),
            ]
        ),
        0,
    ).sum()
    elbo, stderr = elbo_estimate(model, EmptyGuide(), x, num_samples=20)
    assert elbo == pytest.approx(float(exact), abs=1e-5)
    assert stderr == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="num_samples: 0"):
        elbo_estimate(model, EmptyGuide(), x, num_samples=0)


def two_view_model(x, y=None):
    """z_n ~ N(0, 1); x_n, y_n ~ N(z_n, 1): two data arguments."""
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        pyro.sample("y", dist.Normal(z, 1.0), obs=y)


def two_view_guide(x, y=None):
    # the exact posterior N((x + y) / 3, 1/3) when y is given
    y = x if y is None else y
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal((x + y) / 3, 3**-0.5))


def test_a_model_with_two_data_arguments_gets_both_or_a_refusal():
    x, y = torch.tensor([0.3, -1.0, 2.0]), torch.tensor([1.1, 0.2, 1.5])
    # exact guide: every weight is p(x_n, y_n) = N([x, y]; 0, [[2, 1], [1, 2]])
    cov = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
    exact = dist.MultivariateNormal(torch.zeros(2), cov).log_prob(torch.stack([x, y], -1))
    torch.testing.assert_close(elbo_per_datapoint(two_view_model, two_view_guide, (x, y), 5), exact)
    torch.testing.assert_close(
        iwae_log_likelihood(two_view_model, two_view_guide, (x, y), 5), exact
    )
    # y left out: it would be drawn from the prior and scored as a latent (ELBO of 0.0)
    with pytest.raises(ValueError, match=r"the sites \['y'\] are neither observed nor drawn"):
        elbo_per_datapoint(two_view_model, two_view_guide, x)


def test_evaluators_loop_over_particles_when_the_model_cannot_broadcast():
    from pyro_vae.traces import VectorizationWarning
    from tests.pyro_vae.estimators.test_base import X_MISSING, masked_guide, masked_model

    rows = []
    for row in X_MISSING:
        obs = row[row != -1]
        cov = torch.eye(len(obs)) + torch.ones(len(obs), len(obs))
        rows.append(dist.MultivariateNormal(torch.zeros(len(obs)), cov).log_prob(obs))
    exact = torch.stack(rows)
    with pytest.warns(VectorizationWarning):
        elbo = elbo_per_datapoint(masked_model, masked_guide, X_MISSING, 4)
    torch.testing.assert_close(elbo, exact)
    ll = iwae_log_likelihood(masked_model, masked_guide, X_MISSING, 8, vectorize_particles=False)
    torch.testing.assert_close(ll, exact)


def test_an_evaluator_refuses_a_device_this_machine_lacks_by_name(monkeypatch):
    from models.vae import VAE
    from pyro_vae.evaluate import elbo_per_datapoint

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    model = VAE(4, latent_dim=2, hidden_dims=(3,))
    with pytest.raises(ValueError, match="device: 'cuda' is not available on this machine"):
        elbo_per_datapoint(model, model.make_guide(), torch.zeros(3, 4), device="cuda")


PI, MU, SIGMA = torch.tensor([0.2, 0.3, 0.5]), torch.tensor([-4.0, 0.0, 4.0]), 0.5


def mixture_model(x, num_data=None):
    """z_n ~ Categorical(π), summed out by enumeration; u_n ~ N(0, 1); x_n ~ N(μ_z + u, σ²):
    log p(x_n) = log Σ_z π_z N(x_n; μ_z, 1 + σ²)."""
    with data_plate(x, num_data):
        z = pyro.sample("z", dist.Categorical(PI), infer={"enumerate": "parallel"})
        u = pyro.sample("u", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(MU[z] + u, SIGMA), obs=x)


def prior_guide(x, num_data=None):
    with data_plate(x, num_data):
        pyro.sample("u", dist.Normal(torch.zeros_like(x), 1.0))


def test_a_site_the_model_sums_out_is_summed_out_per_datapoint():
    # drawn from its prior and scored as if from q, IWAE tended to log Σ_z π_z² N(x; …),
    # 1.6 nats low, and the KL term held H(π) (tester C's F1)
    import numpy as np

    x = torch.tensor([-4.2, 0.3, 3.9, 1.5])
    exact = torch.logsumexp(
        PI.log()[:, None] + dist.Normal(MU[:, None], math.sqrt(1 + SIGMA**2)).log_prob(x), 0
    )
    pyro.set_rng_seed(1)
    iwae = iwae_log_likelihood(mixture_model, prior_guide, x, num_samples=4000)
    assert (iwae - exact).abs().max() < 0.05  # IWAE's bias at K = 4000: 0.01 to 0.03 here
    # q(u) = p(u): the ELBO is E_u[log Σ_z π_z N(x; μ_z + u, σ²)], by Gauss-Hermite
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    u = torch.tensor(nodes, dtype=torch.float32)[:, None, None]
    inner = torch.logsumexp(PI.log()[:, None] + dist.Normal(MU[:, None] + u, SIGMA).log_prob(x), -2)
    quadrature = (torch.tensor(weights / weights.sum(), dtype=torch.float32)[:, None] * inner).sum(
        0
    )
    pyro.set_rng_seed(2)
    elbo = elbo_per_datapoint(mixture_model, prior_guide, x, num_samples=4000)
    assert (elbo - quadrature).abs().max() < 0.08  # 4000 draws: standard errors ≤ 0.02
    terms = elbo_terms_per_datapoint(mixture_model, prior_guide, x, num_samples=10)
    # KL(q(u) ‖ p(u)) = 0, z is not in q: up to float32 rounding of log Σ_z π_z = 0
    torch.testing.assert_close(terms.kl, torch.zeros(4), atol=1e-6, rtol=0)


def test_the_kl_of_a_summed_out_mixture_is_to_the_marginal_prior():
    # u | z ~ N(m_z, s_z): the KL is to p(u) = Σ_z π_z N(u; m_z, s_z²), by quadrature; with
    # p(u | z) counted in the first term it came out −H(q) (tester E's F1)
    pi, m, s = (
        torch.tensor([0.2, 0.5, 0.3]),
        torch.tensor([-3.0, 0.0, 2.5]),
        torch.tensor([0.5, 1.0, 0.7]),
    )

    def model(x, num_data=None):
        with data_plate(x, num_data):
            z = pyro.sample("z", dist.Categorical(pi), infer={"enumerate": "parallel"})
            u = pyro.sample("u", dist.Normal(m[z], s[z]))
            pyro.sample("x", dist.Normal(u, 0.6), obs=x)

    def guide(x, num_data=None):
        with data_plate(x, num_data):
            pyro.sample("u", dist.Normal(0.8 * x, 0.9))

    x = torch.tensor([-3.5, 0.3, 3.0])
    pyro.set_rng_seed(0)
    terms = elbo_terms_per_datapoint(model, guide, x, num_samples=20000)
    grid = torch.linspace(-12.0, 12.0, 20001)
    step = grid[1] - grid[0]
    prior = torch.logsumexp(
        pi.log()[:, None] + dist.Normal(m[:, None], s[:, None]).log_prob(grid), 0
    )
    for n, value in enumerate(x):
        q = dist.Normal(0.8 * value, 0.9)
        weight = q.log_prob(grid).exp() * step
        kl = (weight * (q.log_prob(grid) - prior)).sum()
        expected = (weight * dist.Normal(grid, 0.6).log_prob(value)).sum()
        # 20,000 draws: standard errors about 0.01 for both terms
        assert terms.kl[n] == pytest.approx(kl.item(), abs=0.05)
        assert terms.log_likelihood[n] == pytest.approx(expected.item(), abs=0.05)


def test_a_summed_out_site_with_several_variables_per_datapoint_is_refused():
    def per_pixel(x, num_data=None):
        with data_plate(x, num_data), pyro.plate("pixels", 2, dim=-2):
            z = pyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(z, 1.0), obs=x.expand(2, -1))

    def nothing(x, num_data=None):
        pass

    with pytest.raises(ValueError, match=r"site 'z' is summed out by enumeration.*\['pixels'\]"):
        elbo_per_datapoint(per_pixel, nothing, torch.zeros(3))
    with pytest.raises(ValueError, match="drawn in a loop"):
        elbo_per_datapoint(
            mixture_model, prior_guide, torch.zeros(3), vectorize_particles=False, num_samples=2
        )


def test_a_scale_of_the_models_own_counts_per_datapoint_as_in_the_joint_elbo():
    # tester I's F1: with the prior tempered by poutine.scale(τ) the per-datapoint
    # evaluators dropped the scale (log p(x) of the untempered model, 10.4 nats away) while
    # elbo_estimate and psis_khat counted it. The guide is the tempered model's exact
    # posterior, so every importance weight is the tempered evidence, in closed form:
    # x ~ N(b, W Wᵀ/τ + σ² I) times Z = (2π)^{d(1−τ)/2} τ^{−d/2}, the integral of N(z; 0, I)^τ
    from pyro_vae.diagnostics import psis_khat_per_datapoint

    d, D, n, s, tau = 2, 3, 8, 0.5, 0.5
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(D, d, generator=g, dtype=F64), torch.randn(D, generator=g, dtype=F64)
    X = torch.randn(n, d, generator=g, dtype=F64) @ W.T + b
    X = X + s * torch.randn(n, D, generator=g, dtype=F64)
    cov = torch.linalg.inv(tau * torch.eye(d, dtype=F64) + W.T @ W / s**2)
    gain = cov @ W.T / s**2

    def model(x):
        with pyro.plate("data", x.shape[0]):
            with pyro.poutine.scale(scale=tau):
                z = pyro.sample("z", dist.Normal(torch.zeros(d, dtype=F64), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + b, s).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            loc = (x - b) @ gain.T
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=torch.linalg.cholesky(cov)))

    log_z = d * (1 - tau) / 2 * math.log(2 * math.pi) - d / 2 * math.log(tau)
    marginal = dist.MultivariateNormal(b, W @ W.T / tau + s**2 * torch.eye(D, dtype=F64))
    exact = marginal.log_prob(X) + log_z  # per datapoint, nats
    pyro.set_rng_seed(0)
    # the exact posterior: every draw's weight is the evidence, to float64 rounding
    assert torch.allclose(elbo_per_datapoint(model, guide, X, num_samples=5), exact, atol=1e-10)
    assert torch.allclose(iwae_log_likelihood(model, guide, X, num_samples=5), exact, atol=1e-10)
    terms = elbo_terms_per_datapoint(model, guide, X, num_samples=5)
    assert torch.allclose(terms.log_likelihood - terms.kl, exact, atol=1e-10)
    assert torch.isneginf(torch.as_tensor(psis_khat_per_datapoint(model, guide, X).khat)).all()


def _map_guide(x, num_data=None):
    """A point mass at the exact posterior mean of ``model``'s z (a MAP-style guide)."""
    with data_plate(x, num_data):
        pyro.sample("z", dist.Delta((x - B) @ POST_GAIN.T, event_dim=1))


def test_a_point_mass_on_a_continuous_latent_is_warned_about_in_every_evaluator():
    """Tester O: with a Delta guide the evaluators gave 0.656 nats above the exact log
    p(x_n) on every datapoint, silently: log q = 0 is no density over z, so the numbers are
    log p(x, z*) at the point, not bounds. They still come out, with a PointMassWarning."""
    from pyro_vae.evaluate import elbo_estimate
    from pyro_vae.traces import PointMassWarning

    x = torch.tensor([[0.5, -1.0, 0.2], [1.5, 0.3, 1.1], [-0.7, -2.0, 0.0]])
    mean = (x - B) @ POST_GAIN.T
    # log p(x, z*) at the point, in closed form: above log p(x) by −log q_exact(z*)
    joint = dist.Normal(0.0, 1.0).log_prob(mean).sum(-1)
    joint = joint + dist.Normal(mean @ W.T + B, SIGMA).log_prob(x).sum(-1)
    assert (joint > exact_log_likelihood(x)).all()  # the premise: above the evidence
    for estimate in (
        lambda: elbo_per_datapoint(model, _map_guide, x),
        lambda: iwae_log_likelihood(model, _map_guide, x, num_samples=10),
    ):
        with pytest.warns(PointMassWarning, match=r"site\(s\) \['z'\] from a point mass"):
            got = estimate()
        torch.testing.assert_close(got, joint)
    with pytest.warns(PointMassWarning, match="not a bound on log p"):
        total, _ = elbo_estimate(model, _map_guide, x, num_samples=4)
    assert total == pytest.approx(joint.sum().item(), rel=1e-5)


def test_a_point_mass_after_an_autonormal_in_one_guide_list_is_found():
    """Tester Q: the first rule stopped at the first auxiliary site, so AutoDelta after
    AutoNormal in an AutoGuideList went unflagged (k̂ 0.462 reported for a MAP guide); the
    rule is now by the draws: a Delta that repeats between two runs is a point mass."""
    from pyro import poutine
    from pyro.infer import autoguide

    from pyro_vae.evaluate import elbo_estimate
    from pyro_vae.traces import PointMassWarning

    x = torch.randn(8, generator=torch.Generator().manual_seed(0)) + 3.0

    def model(x):
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 8):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(a + z, 1.0), obs=x)

    pyro.clear_param_store()
    normal = autoguide.AutoNormal(poutine.block(model, expose=["z"]))
    both = autoguide.AutoGuideList(model)
    both.append(normal)
    both.append(autoguide.AutoDelta(poutine.block(model, expose=["a"])))
    with pytest.warns(PointMassWarning, match=r"site\(s\) \['a'\]"):
        elbo_estimate(model, both, x, num_samples=4)
    whole = autoguide.AutoNormal(model)  # its Delta sites are images of its draws
    with warnings.catch_warnings():
        warnings.simplefilter("error", PointMassWarning)
        elbo_estimate(model, whole, x, num_samples=4)


SCALAR_X = torch.tensor([0.5, -1.0, 2.0, 0.3])
SCALAR_SIGMA = 0.7


def scalar_model(x):
    """z_n ~ N(0, 1), x_n ~ N(z_n, 0.7²): log p(x_n) = log N(x_n; 0, 1.49)."""
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, SCALAR_SIGMA), obs=x)


def scalar_elbo(x, loc, scale):
    """The closed-form ELBO of q(z_n) = N(loc_n, scale_n²) for :func:`scalar_model`."""
    likelihood = -0.5 * math.log(2 * math.pi * SCALAR_SIGMA**2) - ((x - loc) ** 2 + scale**2) / (
        2 * SCALAR_SIGMA**2
    )
    prior = -0.5 * math.log(2 * math.pi) - (loc**2 + scale**2) / 2
    return likelihood + prior + 0.5 * torch.log(2 * math.pi * math.e * scale**2)


def test_a_scale_latents_pair_is_scored_as_the_model_it_wraps():
    """Tester's fault 1: a pair wrapped in ScaleLatents (β-VAE for plain SVI) was scored
    with its β-objective, and IWAE reported +2.35 nats where log p(x_1) = −1.20. Every
    evaluator scores the pair unwrapped: the same draws give the same numbers as the bare
    pair, and log p(x) is the exact N(0, 1.49) one within 4 Monte Carlo standard errors of
    the importance-sampling mean (se = sd(w / mean w) / √K from the pair's own weights),
    and the ELBO the closed form within 4 standard errors of its mean of log w."""
    from pyro_vae.annealing import ScaleLatents
    from pyro_vae.evaluate import elbo_estimate

    loc, scale = torch.tensor([0.2, -0.5, 1.0, 0.1]), 0.6

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(loc, scale))

    wrapped = ScaleLatents(4.0)(ScaleLatents(0.5)(scalar_model)), ScaleLatents(4.0, True)(guide)
    x, k = SCALAR_X, 20000
    for evaluate in (
        lambda m, g: elbo_per_datapoint(m, g, x, num_samples=100),
        lambda m, g: torch.stack(elbo_terms_per_datapoint(m, g, x, num_samples=100)),
        lambda m, g: log_importance_weights(m, g, x, 100),
        lambda m, g: iwae_log_likelihood(m, g, x, num_samples=100),
        lambda m, g: torch.tensor(elbo_estimate(m, g, x, num_samples=100)),
    ):
        pyro.set_rng_seed(0)
        bare = evaluate(scalar_model, guide)
        pyro.set_rng_seed(0)
        torch.testing.assert_close(evaluate(*wrapped), bare)
    pyro.set_rng_seed(0)
    log_w = log_importance_weights(scalar_model, guide, x, k).double()
    se = (log_w.softmax(0) * k).std(0) / math.sqrt(k)
    exact = dist.Normal(0.0, math.sqrt(1 + SCALAR_SIGMA**2)).log_prob(x)
    pyro.set_rng_seed(1)
    log_p = iwae_log_likelihood(*wrapped, x, num_samples=k)
    assert ((log_p - exact).abs() < 4 * se).all(), (log_p, exact, se)
    pyro.set_rng_seed(1)
    elbo = elbo_per_datapoint(*wrapped, x, num_samples=k)
    exact = scalar_elbo(x, loc, torch.tensor(scale))
    assert ((elbo - exact).abs() < 4 * log_w.std(0) / math.sqrt(k)).all(), (elbo, exact)


def test_rows_of_a_plain_param_guide_are_its_own_rows():
    """Tester's fault 3: with ``rows=`` and a guide of plain ``pyro.param`` rows (no
    autoguide, no ``num_datapoints``), N was taken to be ``len(x)``, and rows 2..3 of a
    four-row guide were refused "for 2 rows". N is not known there; the rows are handed to
    the guide, which indexes its own parameters: the ELBO of rows 2..3 is the closed form
    of those rows' q, within 4 Monte Carlo standard errors."""
    from pyro.distributions import constraints

    loc0, scale0 = torch.tensor([0.1, -0.4, 0.9, 0.0]), torch.tensor([0.5, 0.8, 0.3, 1.2])

    def guide(x):
        loc = pyro.param("loc", loc0)
        scale = pyro.param("scale", scale0, constraint=constraints.positive)
        with pyro.plate("data", len(x)) as i:
            pyro.sample("z", dist.Normal(loc[i], scale[i]))

    x, k, rows = SCALAR_X[2:], 20000, torch.tensor([2, 3])
    exact = scalar_elbo(x, loc0[2:], scale0[2:])
    pyro.set_rng_seed(0)
    se = log_importance_weights(scalar_model, guide, SCALAR_X, k).std(0)[2:] / math.sqrt(k)
    pyro.set_rng_seed(1)
    elbo = elbo_per_datapoint(scalar_model, guide, x, num_samples=k, rows=rows)
    assert ((elbo - exact).abs() < 4 * se).all(), (elbo, exact, se)
    with pytest.raises(ValueError, match=r"rows: indices -1\.\.2; expected indices ≥ 0"):
        elbo_per_datapoint(scalar_model, guide, x, rows=torch.tensor([-1, 2]))


# Tester's F3: the evaluators peeled ScaleLatents off a pair only where it was the outermost
# functools.partial, and reported the β-objective (−8.18 against an ELBO of −4.61) for a
# handler under any other wrapping. Each wrapping below puts β = 4 on the latents of
# scalar_model and of a guide q(z_n) = N(loc_n, scale²).
BETA = 4.0
POSTERIOR_GAIN = 1.0 / (1.0 + SCALAR_SIGMA**2)  # p(z | x) = N(x / 1.49, 0.49 / 1.49)
POSTERIOR_SCALE = math.sqrt(SCALAR_SIGMA**2 / (1.0 + SCALAR_SIGMA**2))


def scalar_guide(x, gain=0.5, scale=0.6):
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(gain * x, scale))


def scaled_inside(x):
    """scalar_model with the handler entered inside its own code."""
    with pyro.plate("data", len(x)):
        with ScaleLatents(BETA):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, SCALAR_SIGMA), obs=x)


def wrapped_pair(how: str, gain: float, scale: float) -> tuple:
    """scalar_model and scalar_guide(gain, scale) with ScaleLatents(β) put on them ``how``."""
    guide = functools.partial(scalar_guide, gain=gain, scale=scale)
    model_handler, guide_handler = ScaleLatents(BETA), ScaleLatents(BETA, guide=True)
    if how == "outermost":
        return model_handler(scalar_model), guide_handler(guide)
    if how == "partial":
        return functools.partial(model_handler(scalar_model)), functools.partial(
            guide_handler(guide)
        )
    if how == "block":  # hides param messages only: the sample sites still reach the trace
        return tuple(
            poutine.block(h(fn), hide_types=["param"])
            for h, fn in ((model_handler, scalar_model), (guide_handler, guide))
        )
    if how == "function":
        return (lambda x: model_handler(scalar_model)(x)), (lambda x: guide_handler(guide)(x))

    def guide_inside(x):
        with pyro.plate("data", len(x)), ScaleLatents(BETA, guide=True):
            pyro.sample("z", dist.Normal(gain * x, scale))

    return scaled_inside, guide_inside


def beta_term_moments(x, loc, scale, beta):
    """Mean and variance over z = loc + scale·ε ~ q of log p(x | z) + β (log p(z) − log q(z))
    for scalar_model: ``beta = 1`` is log w, whose mean is the ELBO. The term is
    a + b ε + c ε² with b = s (x − m) / σ² − β m s and c = β / 2 − s² / (2σ²) − β s² / 2,
    so its variance is b² + 2c² (ε ~ N(0, 1): Var ε = 1, Var ε² = 2, Cov(ε, ε²) = 0)."""
    s2, v = scale**2, SCALAR_SIGMA**2
    likelihood = -0.5 * math.log(2 * math.pi * v) - ((x - loc) ** 2 + s2) / (2 * v)
    prior = -0.5 * math.log(2 * math.pi) - (loc**2 + s2) / 2
    entropy = 0.5 * math.log(2 * math.pi * math.e * s2)
    b = scale * (x - loc) / v - beta * loc * scale
    c = beta / 2 - s2 / (2 * v) - beta * s2 / 2
    return likelihood + beta * (prior + entropy), b**2 + 2 * c**2


WRAPPINGS = ["outermost", "partial", "block", "function", "inside"]


@pytest.mark.parametrize("how", WRAPPINGS)
def test_the_elbo_of_a_beta_pair_is_the_models_however_it_is_wrapped(how):
    """elbo_per_datapoint and elbo_estimate against the closed-form ELBO of q = N(0.5 x, 0.6²)
    (not the posterior, so the ELBO is 0.4 to 1.7 nats below log p(x) and the β-objective
    3 × KL = 1.0 to 2.4 nats below the ELBO). Tolerance: 5 standard errors of the Monte
    Carlo mean, √(Var log w / K) from the closed-form variance (0.003 to 0.013 nats per row
    at K = 4000; the whole-data sum's from the summed variances)."""
    from pyro_vae.evaluate import elbo_estimate

    x, k = SCALAR_X, 4000
    exact, var = beta_term_moments(x, 0.5 * x, 0.6, 1.0)
    model, guide = wrapped_pair(how, 0.5, 0.6)
    pyro.set_rng_seed(0)
    elbo = elbo_per_datapoint(model, guide, x, num_samples=k)
    assert ((elbo - exact).abs() < 5 * (var / k).sqrt()).all(), (elbo, exact)
    pyro.set_rng_seed(0)
    total, _ = elbo_estimate(model, guide, x, num_samples=k, num_chunks=4)
    assert abs(total - float(exact.sum())) < 5 * math.sqrt(float(var.sum()) / k), total
    pyro.set_rng_seed(0)
    terms = elbo_terms_per_datapoint(model, guide, x, num_samples=k)
    assert ((terms.log_likelihood - terms.kl - exact).abs() < 5 * (var / k).sqrt()).all()


@pytest.mark.parametrize("how", WRAPPINGS)
def test_log_p_x_of_a_beta_pair_is_the_models_however_it_is_wrapped(how):
    """iwae_log_likelihood against log N(x; 0, 1 + σ²). The guide is the exact posterior
    N(x / 1.49, 0.49 / 1.49), so every importance weight is p(x) itself (b = c = 0 in
    beta_term_moments): any K gives log p(x) up to float32 rounding of terms of a few nats,
    hence 1e-4. The β-objective's weights are not constant, and its estimate misses by nats."""
    x = SCALAR_X
    exact = dist.Normal(0.0, math.sqrt(1 + SCALAR_SIGMA**2)).log_prob(x)
    model, guide = wrapped_pair(how, POSTERIOR_GAIN, POSTERIOR_SCALE)
    pyro.set_rng_seed(0)
    log_p = iwae_log_likelihood(model, guide, x, num_samples=50)
    torch.testing.assert_close(log_p, exact, atol=1e-4, rtol=0)
    pyro.set_rng_seed(0)
    log_w = log_importance_weights(model, guide, x, 50)
    torch.testing.assert_close(log_w, exact.expand(50, -1), atol=1e-4, rtol=0)


def test_training_keeps_the_beta_objective_after_evaluators_ran_and_raised():
    """unscaled() does not outlive an evaluator, one that raises inside it included: an SVI
    step's loss on the handler-inside pair is still −Σ_n E_q[log p(x_n | z) + β (log p(z) −
    log q(z))], in closed form (beta_term_moments), within 5 standard errors at 8000
    vectorized particles (the plain ELBO is 1.0 to 2.4 nats per row away)."""
    from pyro.infer import SVI, Trace_ELBO
    from pyro.optim import Adam

    from pyro_vae.annealing import unscaled

    x, particles = SCALAR_X, 8000
    model, guide = wrapped_pair("inside", 0.5, 0.6)

    def failing_guide(x):
        guide(x)
        raise RuntimeError("the guide fails mid-evaluation")

    pyro.set_rng_seed(0)
    elbo_per_datapoint(model, guide, x, num_samples=10)
    with pytest.raises(RuntimeError, match="fails mid-evaluation"):
        elbo_per_datapoint(model, failing_guide, x, num_samples=10)
    with pytest.raises(RuntimeError, match="fails mid-evaluation"), unscaled():
        iwae_log_likelihood(model, failing_guide, x, num_samples=10)

    def param_guide(x):  # SVI steps on parameters; this one is read, and left at 0.5
        gain = pyro.param("gain", torch.tensor(0.5))
        with pyro.plate("data", len(x)), ScaleLatents(BETA, guide=True):
            pyro.sample("z", dist.Normal(gain * x, 0.6))

    pyro.clear_param_store()
    estimator = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    loss = SVI(model, param_guide, Adam({"lr": 0.0}), estimator).step(x)
    mean, var = beta_term_moments(x, 0.5 * x, 0.6, BETA)
    assert abs(-loss - float(mean.sum())) < 5 * math.sqrt(float(var.sum()) / particles), loss


# A scale c common to every site of model and guide (poutine.scale(c) around both: a
# minibatch rescaled by hand) multiplies the whole objective: the ELBO is c × the pair's,
# and IWAE's c · log (1/K) Σ_k exp(log w_k / c), as the iwae estimator counts it. Folded
# into each log-weight, the estimate at c = 3 came out 0.07 nats above c · log p(x_1)
# (builder L's L1).
COMMON = 3.0


def scaled_pair(scale, guide=scalar_guide, model=scalar_model) -> tuple:
    return poutine.scale(model, scale=scale), poutine.scale(guide, scale=scale)


def exact_scalar_log_p(x):
    return dist.Normal(0.0, math.sqrt(1.0 + SCALAR_SIGMA**2)).log_prob(x)


def test_iwae_of_a_pair_scaled_alike_is_c_times_the_pairs_estimate():
    x, k = SCALAR_X, 2000
    exact = exact_scalar_log_p(x)
    posterior = functools.partial(scalar_guide, gain=POSTERIOR_GAIN, scale=POSTERIOR_SCALE)
    pyro.set_rng_seed(0)  # the exact posterior: every weight is p(x_n), to rounding
    iwae = iwae_log_likelihood(*scaled_pair(COMMON, posterior), x, num_samples=50)
    torch.testing.assert_close(iwae, COMMON * exact)
    iwae, elbo = {}, {}
    for c in (1.0, COMMON):
        pyro.set_rng_seed(0)
        iwae[c] = iwae_log_likelihood(*scaled_pair(c), x, num_samples=k)
        pyro.set_rng_seed(0)
        elbo[c] = elbo_per_datapoint(*scaled_pair(c), x, num_samples=k)
    torch.testing.assert_close(iwae[COMMON], COMMON * iwae[1.0])
    torch.testing.assert_close(elbo[COMMON], COMMON * elbo[1.0])
    # within Monte Carlo error of c log p(x): sd of log mean(w) ≈ sd(w) / (√K mean(w))
    pyro.set_rng_seed(0)
    log_w = log_importance_weights(scalar_model, scalar_guide, x, k)
    w = (log_w - log_w.max(0).values).exp()
    se = (w / w.mean(0)).std(0) / math.sqrt(k)
    assert ((iwae[COMMON] / COMMON - exact).abs() < 5 * se + 1e-4).all(), (iwae, exact, se)


def test_a_scale_per_datapoint_common_to_every_site_multiplies_each_rows_estimate():
    scale = torch.tensor([1.0, 2.0, 3.0, 0.5])
    out = {}
    for name, pair in {"plain": (scalar_model, scalar_guide), "scaled": scaled_pair(scale)}.items():
        pyro.set_rng_seed(0)
        out[name] = iwae_log_likelihood(*pair, SCALAR_X, num_samples=200)
    torch.testing.assert_close(out["scaled"], scale * out["plain"])


def test_log_importance_weights_are_the_unscaled_ratios_of_a_pair_scaled_alike():
    pyro.set_rng_seed(0)
    plain = log_importance_weights(scalar_model, scalar_guide, SCALAR_X, 7)
    pyro.set_rng_seed(0)
    scaled = log_importance_weights(*scaled_pair(COMMON), SCALAR_X, 7)
    torch.testing.assert_close(scaled, plain)


def test_a_summed_out_site_under_a_common_scale_gives_c_times_the_estimate():
    x = torch.tensor([-4.2, 0.3, 3.9, 1.5])
    out = {}
    for c in (1.0, COMMON):
        pyro.set_rng_seed(1)
        pair = scaled_pair(c, guide=prior_guide, model=mixture_model)
        out[c] = iwae_log_likelihood(*pair, x, num_samples=500)
    torch.testing.assert_close(out[COMMON], COMMON * out[1.0])


@pytest.mark.parametrize("where", ["model", "observations"])
def test_scales_not_common_to_every_site_stay_folded_into_each_weight(where):
    """A scale on the model alone, or on its observations alone, multiplies no objective:
    it stays in each log-weight, bit for bit as before scales were taken out."""

    def observations_scaled(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            with poutine.scale(scale=COMMON):
                pyro.sample("x", dist.Normal(z, SCALAR_SIGMA), obs=x)

    if where == "model":
        model = poutine.scale(scalar_model, scale=COMMON)
    else:
        model = observations_scaled
    pyro.set_rng_seed(0)
    iwae = iwae_log_likelihood(model, scalar_guide, SCALAR_X, num_samples=300)
    pyro.set_rng_seed(0)
    log_w = log_importance_weights(model, scalar_guide, SCALAR_X, 300)
    assert torch.equal(iwae, torch.logsumexp(log_w, 0) - math.log(300))
    pyro.set_rng_seed(0)
    folded = log_importance_weights(scalar_model, scalar_guide, SCALAR_X, 300)
    assert not torch.allclose(log_w, folded)  # the scale is in each weight


class ThreeChildren(torch.nn.Module):
    """Dropout and BatchNorm that train, and a Dropout the user has put in eval mode."""

    def __init__(self):
        super().__init__()
        self.drop, self.norm = torch.nn.Dropout(0.5), torch.nn.BatchNorm1d(3)
        self.frozen = torch.nn.Dropout(0.5)
        self.frozen.eval()
        self.flags_seen = []

    def forward(self, x):
        self.norm(x)
        self.frozen(x)
        out = self.drop(x)
        self.flags_seen.append([m.training for m in self.modules()])  # each has been called
        return out

    def model(self, x):
        return self(x)


def _wrappings(net):
    def plain(x):
        return net.model(x)

    return {
        "module": net,
        "partial": functools.partial(net.model),
        "poutine.scale": poutine.scale(net.model, 0.5),
        "ScaleLatents": ScaleLatents(2.0)(net.model),
        "lambda": lambda x: net.model(x),
        "plain function": plain,
    }


@pytest.mark.parametrize("how", list(_wrappings(ThreeChildren())))
def test_eval_mode_switches_the_modules_of_a_model_however_it_is_wrapped(how):
    """Review's finding: only a module, a bound method or Minibatched was switched; any other
    wrapping left dropout on and BatchNorm updating its statistics during evaluation. Inside
    eval_mode every module runs in eval mode: dropout is the identity (output == input,
    exactly) and BatchNorm's running mean stays the zeros it was made with; on leaving,
    each flag is as before, the frozen child's False under training parents included."""
    from pyro_vae.evaluate import eval_mode

    torch.manual_seed(0)
    net = ThreeChildren()
    fn = _wrappings(net)[how]
    before = [m.training for m in net.modules()]
    assert before == [True, True, True, False]
    x = torch.randn(8, 3)
    with eval_mode(fn):
        out = fn(x)
    assert torch.equal(out, x)
    assert net.flags_seen == [[False, False, False, False]]
    assert torch.equal(net.norm.running_mean, torch.zeros(3))
    assert [m.training for m in net.modules()] == before


def test_eval_mode_restores_flags_when_the_block_raises():
    from pyro_vae.evaluate import eval_mode

    net = ThreeChildren()
    with pytest.raises(RuntimeError, match="inside"), eval_mode(lambda x: net(x)):
        net(torch.randn(4, 3))
        raise RuntimeError("inside")
    assert [m.training for m in net.modules()] == [True, True, True, False]
    net(torch.randn(4, 3))  # the hook is gone: BatchNorm trains again
    assert not torch.equal(net.norm.running_mean, torch.zeros(3))


class DropoutDecoder(torch.nn.Module):
    """The linear-Gaussian model with dropout on the decoder's mean."""

    def __init__(self):
        super().__init__()
        self.drop = torch.nn.Dropout(0.5)

    def model(self, x, num_data=None):
        with data_plate(x, num_data):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).expand([len(x), 2]).to_event(1))
            pyro.sample("x", dist.Normal(self.drop(z @ W.T + B), SIGMA).to_event(1), obs=x)


@pytest.mark.parametrize("how", ["partial", "lambda", "poutine.scale"])
def test_the_elbo_of_a_wrapped_model_with_dropout_is_the_unwrapped_models(how, x):
    """An evaluator end to end: with the model behind a wrapper, dropout stayed on and the
    ELBO was that of a noisy decoder. The same seed gives bitwise the same numbers as the
    bare bound method, which eval_mode has always found."""
    net, guide = DropoutDecoder(), make_guide()
    wrapped = {
        "partial": functools.partial(net.model),
        "lambda": lambda x: net.model(x),
        "poutine.scale": poutine.scale(net.model, 1.0),
    }[how]
    pyro.set_rng_seed(0)
    bare = elbo_per_datapoint(net.model, guide, x, num_samples=10)
    pyro.set_rng_seed(0)
    assert torch.equal(elbo_per_datapoint(wrapped, guide, x, num_samples=10), bare)
    assert net.training


def test_the_evaluators_probes_pass_num_data_as_their_runs_do():
    """Tester AI's F1, in the evaluators: prepare's probe of the model alone left num_data
    out, and a model that requires it failed there. Its ELBO per datapoint is that of the
    same pair with N bound in advance, draw for draw."""
    import functools

    from pyro_vae.evaluate import elbo_per_datapoint
    from tests.pyro_vae.test_training_pair import _num_data_pair

    model, guide = _num_data_pair()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    pyro.set_rng_seed(3)
    given = elbo_per_datapoint(model, guide, x, num_samples=20)
    bound = [functools.partial(fn, num_data=5) for fn in (model, guide)]
    pyro.set_rng_seed(3)
    torch.testing.assert_close(given, elbo_per_datapoint(*bound, x, num_samples=20))


def test_elbo_estimate_refuses_a_model_latent_the_guide_leaves_out():
    """Tester CW: tau, left out of the guide, was drawn from its prior and log p(tau)
    scored as data: an ELBO 1.42 nats below the one with q(tau) = p(tau), unsaid, where
    elbo_per_datapoint and iwae_log_likelihood refused it. A marked site is summed out."""
    from pyro_vae.evaluate import elbo_estimate

    x = torch.randn(20) + 2

    def model(x, marked=False):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        infer = {"enumerate": "parallel"} if marked else {}
        shift = pyro.sample("tau", dist.Bernoulli(0.5), infer=infer)
        with pyro.plate("data", 20):
            pyro.sample("x", dist.Normal(mu + shift, 1.0), obs=x)

    def guide(x, marked=False):
        pyro.sample("mu", dist.Normal(x.mean(), 0.3))

    with pytest.raises(ValueError, match=r"model: the sites \['tau'\] are neither observed"):
        elbo_estimate(model, guide, x, num_samples=10)
    assert math.isfinite(elbo_estimate(model, guide, x, marked=True, num_samples=10)[0])


def test_elbo_estimate_refuses_a_guide_masking_what_the_model_scores():
    """The README's own example (z ~ N(0, 1), x ~ N(z, 0.1²), q = N(0, 0.01²) masked off):
    elbo_estimate still returned 0.460 nats at x = 0, where log p(x) = −0.924 (tester AK),
    though the README said every evaluator refused it."""
    from pyro_vae.evaluate import elbo_estimate

    def model(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 0.1), obs=x)

    def guide(x):
        pyro.sample("z", dist.Normal(0.0, 0.01).mask(False))

    with pytest.raises(ValueError, match="site 'z' has elements the guide masks off"):
        elbo_estimate(model, guide, torch.tensor(0.0), num_samples=10)


def test_nested_eval_mode_blocks_put_every_flag_back():
    """Review of cb181f9..c795b70: an outer block that met a module only through its hook
    (a lambda's network), while an inner block had already switched it, recorded eval mode
    and left the network in it for good. Either order of nesting restores every flag, a
    child the user put in eval mode included."""
    from pyro_vae.evaluate import eval_mode

    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.5))
    f = lambda x: net(x)  # noqa: E731
    with eval_mode(f), eval_mode(net):
        f(torch.ones(2, 3))
        assert not any(m.training for m in net.modules())
    assert [m.training for m in net.modules()] == [True, True, True]
    net[1].eval()
    with eval_mode(net), eval_mode(f):
        f(torch.ones(2, 3))
    assert [m.training for m in net.modules()] == [True, True, False]


def test_elbo_estimate_reads_a_mask_inside_a_transformed_prior():
    """Tester AL: the model's mask inside a TransformedDistribution went unseen; a guide
    scoring the masked-off elements gave 2.12 ± 0.04 nats where log p(x) = 0. Refused;
    masked alike, the ELBO is −KL(N(0, 9) ‖ N(0, 1)) = −(9 − 1 − log 9)/2 = −2.901 for the
    one element left, within 4 standard errors of 20,000 draws."""
    from pyro.distributions.transforms import ExpTransform

    from pyro_vae.evaluate import elbo_estimate

    m = torch.tensor([True, False, False])

    def model():
        with pyro.plate("n", 3):
            prior = dist.TransformedDistribution(dist.Normal(0.0, 1.0).mask(m), [ExpTransform()])
            pyro.sample("z", prior)

    def guide(masked=True):
        with pyro.plate("n", 3):
            q = dist.LogNormal(torch.zeros(3), torch.full((3,), 3.0))
            pyro.sample("z", q.mask(m) if masked else q)

    with pytest.raises(ValueError, match="site 'z' has elements the model masks off"):
        elbo_estimate(model, lambda: guide(masked=False), num_samples=10)
    elbo, se = elbo_estimate(model, guide, num_samples=20000)
    assert abs(elbo - -(9 - 1 - math.log(9)) / 2) < 4 * se


@pytest.mark.parametrize(
    ("rows", "refusal"),
    [
        # tester CJ: one image scored as 64 rows of one pixel each
        (lambda x: x[0], r"x: shape \(64,\), rows of 1 value; the model takes x_dim=64, "
         r"expected \[N, 64\] \(one datapoint is x\[None\]"),
        (lambda x: x[:0], r"x: shape \(0, 64\) has no rows"),  # a ZeroDivisionError
        (lambda x: x[:, :63], r"x: shape \(5, 63\), rows of 63 values; the model takes "
         r"x_dim=64"),  # PyTorch's "mat1 and mat2 shapes cannot be multiplied"
        # tester FC: torch's "linear(): argument 'input' must be Tensor"
        (lambda x: x.numpy(), r"x: (a NumPy array of shape \(5, 64\); expected a "
         r"torch.Tensor \[N, 64\]|expected a tensor .* got ndarray)"),
        # tester FJ: amortization_gap failed in Pyro's check of the encoder's loc
        (lambda x: x.index_put((torch.tensor([3, 3]), torch.tensor([0, 9])),
                               torch.tensor([math.nan, math.inf])),
         r"x: 2 of its 320 entries are NaN or infinite \(the first in row 3\); expected "
         r"finite values"),
    ],
)  # fmt: skip
def test_rows_the_model_does_not_take_are_refused_by_shape(rows, refusal):
    from models.vae import VAE
    from pyro_vae.amortization import amortization_gap
    from pyro_vae.diagnostics import psis_khat_per_datapoint, to_inference_data
    from pyro_vae.latent_summaries import latent_means, reconstruction_error

    pyro.set_rng_seed(0)
    vae = VAE(64, latent_dim=2, hidden_dims=(8,))
    x = torch.rand(5, 64).round()
    # tester CO: elbo_estimate scored x[0] as 64 rows too; tester FC: the diagnostics raised
    # an IndexError, a ZeroDivisionError or torch's matmul error
    diagnostics = (
        lambda m, g, x: to_inference_data(m, g, x, num_samples=10),
        lambda m, g, x: psis_khat_per_datapoint(m, g, x, 21),
        lambda m, g, x: amortization_gap(m, g, x, steps=1),
        latent_means,
        reconstruction_error,
    )
    for evaluator in (elbo_per_datapoint, iwae_log_likelihood, elbo_estimate, *diagnostics):
        with pytest.raises(ValueError, match=refusal):
            evaluator(vae, vae.make_guide(), rows(x))
    assert elbo_per_datapoint(vae, vae.make_guide(), x[None, 0]).shape == (1,)


def test_elbo_estimate_checks_its_vectorized_particles_and_loops_a_branch_on_a_draw():
    """Tester DG: ``elbo_estimate`` ran Pyro's vectorized ``TraceEnum_ELBO`` unchecked,
    and a model branching on ``z.sum() > 0.5`` came out 55 standard errors above its ELBO
    (every particle took the branch of their sum), with no word. The exact ELBO is a sum
    over z's four states."""
    import itertools

    from pyro_vae.traces import VectorizationWarning

    x = torch.tensor(1.0)

    def model(x):
        z = pyro.sample("z", dist.Bernoulli(torch.full((2,), 0.3)).to_event(1))
        pyro.sample("x", dist.Normal(2.0 if z.sum() > 0.5 else -1.0, 1.0), obs=x)

    def guide(x):
        pyro.sample("z", dist.Bernoulli(torch.full((2,), 0.5)).to_event(1))

    exact = 0.0
    for state in itertools.product([0.0, 1.0], repeat=2):
        z = torch.tensor(state)
        log_q = dist.Bernoulli(torch.full((2,), 0.5)).log_prob(z).sum()
        log_p = dist.Bernoulli(torch.full((2,), 0.3)).log_prob(z).sum()
        log_lik = dist.Normal(2.0 if z.sum() > 0.5 else -1.0, 1.0).log_prob(x)
        exact += float(log_q.exp() * (log_p + log_lik - log_q))
    pyro.set_rng_seed(0)
    with pytest.warns(VectorizationWarning, match="draw 'z' is read into Python"):
        elbo, se = elbo_estimate(model, guide, x, num_samples=1000, num_chunks=10)
    assert abs(elbo - exact) < 5 * se  # se ≈ 0.01 nats; the fault: 0.37 nats


def _model_in_form(form):
    """``model``'s generative process, its data plate written in ``form``."""

    def written(x, num_data=None):
        if form == "num_data, obs=x":  # draws each chunk's rows among the N, observes x
            plate = pyro.plate("data", num_data or len(x), subsample_size=len(x))
        else:
            plate = pyro.plate("data", len(x))
        with plate as i:
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).expand([len(x), 2]).to_event(1))
            obs = x[i] if form == "as i" else x
            pyro.sample("x", dist.Normal(z @ W.T + B, SIGMA).to_event(1), obs=obs)

    return written


def test_a_plate_drawing_each_chunk_of_n_rows_and_observing_x_is_scored_as_data_plate(x):
    # tester EJ: refused in chunks as a self-subsampling plate, though fit trains it
    guide = make_guide(0.8, 1.3)
    scores = []
    for each in (_model_in_form("num_data, obs=x"), model):
        pyro.set_rng_seed(0)
        scores.append(elbo_per_datapoint(each, guide, x, num_samples=3, batch_size=6))
    assert torch.equal(scores[0], scores[1])


def test_a_model_reading_its_chunk_by_the_plate_indices_is_refused_or_scored_in_one(x):
    # in chunks of 6 of the 20 rows the plate's indices are the chunk's rows among the 20,
    # and x[i] read past the chunk inside the model; in one chunk they are its positions
    guide = make_guide(0.8, 1.3)
    expected = r"plate 'data' their rows among the 20 \(here 14\.\.19\) .* \(batch_size >= 20\)"
    with pytest.raises(DataPlateError, match=expected):
        elbo_per_datapoint(_model_in_form("as i"), guide, x, batch_size=6)
    scores = []
    for each in (_model_in_form("as i"), model):
        pyro.set_rng_seed(0)
        scores.append(elbo_per_datapoint(each, guide, x, num_samples=3, batch_size=20))
    assert torch.equal(scores[0], scores[1])
    # tester EN: rows below the chunk's length were read in their order, the wrong rows
    with pytest.raises(DataPlateError, match=r"observes other values at \['x'\] with them"):
        elbo_per_datapoint(_model_in_form("as i"), guide, x[:3], rows=torch.tensor([2, 0, 1]))


class _KnownWeights:
    """A stand-in for the pair: the log-weights it hands out are the next ``k`` rows of a
    fixed ``[K, B]`` tensor, and a common scale."""

    def __init__(self, log_w, scale):
        self.log_w, self.scale, self.drawn = log_w, scale, 0

    def importance_log_weights(self, args, start, k):
        rows = self.log_w[self.drawn : self.drawn + k]
        self.drawn += k
        return rows, self.scale


@pytest.mark.parametrize("scale", [1.0, 0.25])
@pytest.mark.parametrize(("num_samples", "per_chunk"), [(6, 4), (7, 2), (8, 8), (9, 1)])
def test_the_rise_is_from_the_halves_of_the_first_2h_draws_whatever_the_chunks(
    num_samples, per_chunk, scale
):
    log_w = torch.randn(num_samples, 3, dtype=F64) * 2
    x = torch.zeros(3, 5)
    pair = _KnownWeights(log_w, scale)
    full, rise = _iwae_rows(pair, (x,), 0, num_samples, per_chunk * x.numel(), rise=True)
    h = num_samples // 2  # expected, from the draws themselves (an odd K's last left out)
    first, second = (
        torch.logsumexp(part, 0) - math.log(h) for part in (log_w[:h], log_w[h : 2 * h])
    )
    doubled = torch.logsumexp(log_w[: 2 * h], 0) - math.log(2 * h)
    assert torch.allclose(rise, scale * (doubled - (first + second) / 2), rtol=0, atol=1e-12)
    assert (rise >= 0).all()  # Jensen: the estimate from 2h draws is at least their halves'
    expected = scale * (torch.logsumexp(log_w, 0) - math.log(num_samples))
    assert torch.allclose(full, expected, rtol=0, atol=1e-12)
    assert pair.drawn == num_samples


def test_a_guide_factor_is_part_of_log_q_to_the_evaluators():
    """Tester FK: a guide's pyro.factor(..., has_rsample=True) (a Jacobian) was refused by
    the whole-data ELBO as an observation "with a density", after fit had trained on it.
    With q = N(m, 1), z ~ N(0, 1), x_i ~ N(z, 1) and the factor 0.1·z in log q, the ELBO is
    Σ_i [−½ log 2π − ½((x_i − m)² + 1)] − ½ log 2π − ½(m² + 1) + ½ log 2πe − 0.1 m."""
    x, m = torch.tensor([1.5, 0.2, 0.9, 1.1]), 0.2

    def model(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 4):
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        z = pyro.sample("z", dist.Normal(torch.tensor(m), 1.0))
        pyro.factor("jacobian", 0.1 * z, has_rsample=True)

    half_log_2pi = 0.5 * math.log(2 * math.pi)
    exact = sum(-half_log_2pi - 0.5 * ((float(xi) - m) ** 2 + 1) for xi in x)
    exact += -half_log_2pi - 0.5 * (m**2 + 1) + 0.5 * math.log(2 * math.pi * math.e) - 0.1 * m
    pyro.set_rng_seed(0)
    elbo, se = elbo_estimate(model, guide, x, num_samples=4000)
    assert abs(elbo - exact) < 4 * se
