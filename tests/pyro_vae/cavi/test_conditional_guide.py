"""ConditionalCAVIGuide: q_φ(u) · q*(c | u), against closed forms and quadrature that use
neither AutoCAVI nor Pyro's ELBO."""

import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.ops.indexing import Vindex

from pyro_vae.cavi import ConditionalCAVIGuide, NotConjugateError
from tests.pyro_vae.cavi.float64 import F64, t

# --- a Normal mean under a log-normal noise scale: μ conjugate given σ, σ not ---------
Y = 1.0 + 0.7 * torch.randn(20, generator=torch.Generator().manual_seed(0), dtype=F64)
PRIOR_SD = 3.0


def normal_model(y):
    sigma = pyro.sample("sigma", dist.LogNormal(y.new_tensor(0.0), 1.0))
    mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), PRIOR_SD))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, sigma), obs=y)


def sigma_guide(y):
    loc = pyro.param("loc", y.new_tensor(0.0))
    log_scale = pyro.param("log_scale", y.new_tensor(math.log(0.1)))
    pyro.sample("sigma", dist.LogNormal(loc, log_scale.exp()))


def quadrature_elbo(loc, log_scale, y=Y, nodes=80):
    """E_q(σ)[log p(y, σ) − log q(σ)] by Gauss-Hermite quadrature in log σ, μ integrated out
    in closed form (y ~ N(0, σ²I + PRIOR_SD²·11ᵀ)): differentiable in (loc, log_scale)."""
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    x, w = torch.from_numpy(x), torch.from_numpy(w) / math.sqrt(2 * math.pi)
    sigma = (loc + log_scale.exp() * x).exp()
    n = len(y)
    cov = sigma[:, None, None] ** 2 * torch.eye(n, dtype=F64) + PRIOR_SD**2
    log_p = dist.MultivariateNormal(torch.zeros(n, dtype=F64), cov).log_prob(y)
    log_p = log_p + dist.LogNormal(t(0.0), t(1.0)).log_prob(sigma)
    log_q = dist.LogNormal(loc, log_scale.exp()).log_prob(sigma)
    return (w * (log_p - log_q)).sum()


def test_the_elbo_and_its_gradient_are_unbiased_against_quadrature():
    """Per-draw −loss and its gradient in (loc, log_scale) at q(σ) = LogNormal(0, 0.1), far
    from the best q, averaged over 300 draws, against
    the quadrature ELBO and its autograd gradient: within 4 standard errors of the mean
    (seeded; the errors are those of the draws)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = ConditionalCAVIGuide(normal_model, ["sigma"], guide=sigma_guide)
    elbo = Trace_ELBO()
    values, grads = [], []
    for _ in range(300):
        loss = elbo.differentiable_loss(normal_model, guide, Y)
        params = [pyro.param("loc").unconstrained(), pyro.param("log_scale").unconstrained()]
        grads.append(torch.stack(torch.autograd.grad(-loss, params)))
        values.append(-loss.detach())
    values, grads = torch.stack(values), torch.stack(grads)
    loc, log_scale = t(0.0).requires_grad_(), t(math.log(0.1)).requires_grad_()
    exact = quadrature_elbo(loc, log_scale)
    exact_grad = torch.stack(torch.autograd.grad(exact, [loc, log_scale]))
    se = values.std() / math.sqrt(len(values))
    assert abs(values.mean() - exact) < 4 * se
    grad_se = grads.std(0) / math.sqrt(len(grads))
    assert ((grads.mean(0) - exact_grad).abs() < 4 * grad_se).all()
    assert (exact_grad.abs() > 8 * grad_se).all()  # a zero or flipped gradient would fail


def test_svi_reaches_the_best_log_normal_q_by_quadrature_and_stays_below_the_evidence():
    """1500 Adam steps with the default AutoNormal over σ: the ELBO (2,000 draws) within
    0.02 nats of the best log-normal q(σ) with μ's exact conditional (quadrature, maximized
    by Nelder-Mead), and below log p(y) (quadrature over σ)."""
    from scipy.optimize import minimize

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = ConditionalCAVIGuide(normal_model, ["sigma"])
    svi = SVI(normal_model, guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    for _ in range(1500):
        svi.step(Y)
    with torch.no_grad():
        draws = torch.tensor([-Trace_ELBO().loss(normal_model, guide, Y) for _ in range(2000)])
    estimate, se = float(draws.mean()), float(draws.std() / math.sqrt(len(draws)))

    def negative(p):
        return -float(quadrature_elbo(t(p[0]), t(p[1])))

    best = -minimize(negative, [-0.3, -1.8], method="Nelder-Mead",
                     options={"xatol": 1e-8, "fatol": 1e-10}).fun  # fmt: skip
    grid = torch.linspace(0.2, 2.5, 4001, dtype=F64)
    cov = grid[:, None, None] ** 2 * torch.eye(len(Y), dtype=F64) + PRIOR_SD**2
    log_joint = dist.MultivariateNormal(torch.zeros(len(Y), dtype=F64), cov).log_prob(Y)
    log_joint = log_joint + dist.LogNormal(t(0.0), t(1.0)).log_prob(grid)
    evidence = float(torch.logsumexp(log_joint, 0) + torch.log(grid[1] - grid[0]))
    assert best - 0.02 - 4 * se < estimate < evidence
    assert best < evidence


def test_elbo_estimate_draws_it_one_run_per_draw_and_agrees_with_quadrature():
    import warnings

    from pyro_vae import elbo_estimate

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = ConditionalCAVIGuide(normal_model, ["sigma"], guide=sigma_guide)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no vectorized attempt, and no warning of its failure
        estimate, se = elbo_estimate(normal_model, guide, Y, num_samples=200)
    exact = float(quadrature_elbo(t(0.0), t(math.log(0.1))))
    assert abs(estimate - exact) < 4 * se


# --- Bayesian logistic regression under a Gamma precision: τ conjugate given w ----------
def logistic(X, y):
    tau = pyro.sample("tau", dist.Gamma(X.new_tensor(2.0), 1.0))
    w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[-1]), tau.rsqrt()).to_event(1))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Bernoulli(logits=X @ w), obs=y)


def w_guide(X, y):
    pyro.sample("w", dist.Normal(X.new_tensor([0.5, -1.0, 0.2]), 0.4).to_event(1))


def test_each_draw_scores_log_p_of_y_and_w_when_q_star_is_the_exact_conditional():
    """q*(τ | w) is τ's exact conditional, so every draw's log p(y, w, τ) − log q*(τ | w)
    is log p(y | w) + log p(w), w's prior the multivariate Student-t of a Normal with a
    Gamma(a, b) precision (df 2a, scale² b/a): to 1e-10."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(30, 3, generator=g, dtype=F64)
    y = torch.bernoulli(torch.sigmoid(X @ t([1.0, -2.0, 0.5])), generator=g)
    guide = ConditionalCAVIGuide(logistic, ["w"], guide=w_guide)
    pyro.set_rng_seed(0)
    for _ in range(5):
        guide_tr = poutine.trace(guide).get_trace(X, y)
        model_tr = poutine.trace(poutine.replay(logistic, trace=guide_tr)).get_trace(X, y)
        model_tr.compute_log_prob()
        guide_tr.compute_log_prob()
        w = guide_tr.nodes["w"]["value"]
        per_draw = model_tr.log_prob_sum() - guide_tr.nodes["tau"]["log_prob_sum"]
        a, b, d = 2.0, 1.0, 3
        normalizer = math.lgamma(a + d / 2) - math.lgamma(a) + a * math.log(b)
        log_prior_w = (
            normalizer - d / 2 * math.log(2 * math.pi) - (a + d / 2) * torch.log(b + w @ w / 2)
        )
        log_lik = dist.Bernoulli(logits=X @ w).log_prob(y).sum()
        assert abs(per_draw - (log_lik + log_prior_w)) < 1e-10 * abs(float(per_draw))


# --- bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sites", "message"),
    [([], "non-empty list"), ("sigma", "non-empty list"),
     (["scale"], r"\['scale'\] is not a latent sample site of the model; its latents are"),
     (["scale", "y"], r"\['scale', 'y'\] are not latent sample sites of the model; its latents"),
     (["sigma", "mu"], "covers every latent")],
)  # fmt: skip
def test_svi_sites_are_checked_against_the_model_before_any_fit(sites, message):
    with pytest.raises(ValueError, match=message):
        ConditionalCAVIGuide(normal_model, sites)(Y)


def test_float32_data_are_refused_by_argument():
    with pytest.raises(ValueError, match=r"argument 0: torch.float32; expected float64"):
        ConditionalCAVIGuide(normal_model, ["sigma"])(Y.float())


def test_vectorized_particles_are_refused_with_the_way_out():
    pyro.clear_param_store()
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True)
    guide = ConditionalCAVIGuide(normal_model, ["sigma"])
    with pytest.raises(ValueError, match=r"without vectorize_particles"):
        elbo.loss(normal_model, guide, Y)


def test_a_latent_still_not_conjugate_given_u_is_named_with_the_remedy():
    def model(y):
        sigma = pyro.sample("sigma", dist.LogNormal(y.new_tensor(0.0), 1.0))
        u = pyro.sample("u", dist.Normal(y.new_tensor(0.0), 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(u, sigma * u.exp()), obs=y)

    pyro.clear_param_store()
    with pytest.raises(NotConjugateError, match=r"'u'.*add.*to svi_sites"):
        ConditionalCAVIGuide(model, ["sigma"])(Y)


def test_the_diagnostics_draw_from_q_one_run_per_draw_and_score_log_p_of_y_and_w():
    """``to_inference_data`` runs the guide one draw per run (no vectorized attempt and its
    warning), and on the logistic model each draw's lp − log_q, less log q_φ(w), is
    log p(y | w) + log p(w) in closed form (see the test above)."""
    import warnings

    from pyro_vae.diagnostics import to_inference_data

    g = torch.Generator().manual_seed(1)
    X = torch.randn(30, 3, generator=g, dtype=F64)
    y = torch.bernoulli(torch.sigmoid(X @ t([1.0, -2.0, 0.5])), generator=g)
    pyro.set_rng_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = to_inference_data(logistic, ConditionalCAVIGuide(logistic, ["w"], guide=w_guide),
                                 X, y, num_samples=40)  # fmt: skip
    w = torch.from_numpy(data.posterior["w"].values[0])  # [40, 3]
    assert data.posterior["tau"].values.shape == (1, 40)
    log_q_w = dist.Normal(t([0.5, -1.0, 0.2]), 0.4).log_prob(w).sum(-1)
    log_lik = dist.Bernoulli(logits=w @ X.T).log_prob(y).sum(-1)
    a, b, d = 2.0, 1.0, 3
    normalizer = math.lgamma(a + d / 2) - math.lgamma(a) + a * math.log(b)
    log_prior_w = (
        normalizer
        - d / 2 * math.log(2 * math.pi)
        - (a + d / 2) * torch.log(b + (w * w).sum(-1) / 2)
    )
    stats = data.sample_stats
    gap = torch.from_numpy(stats["lp"].values[0] - stats["log_q"].values[0]) + log_q_w
    assert torch.allclose(gap, log_lik + log_prior_w, rtol=1e-9, atol=0)


def test_data_of_another_size_are_checked_again_not_refused():
    """u in the data's plate: its shape follows the data, and the first call's shapes must
    not make a second dataset's draws look vectorized."""

    def local_scales(y):
        mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 3.0))
        with pyro.plate("data", len(y)):
            s = pyro.sample("s", dist.LogNormal(y.new_tensor(0.0), 0.5))
            pyro.sample("y", dist.Normal(mu, s), obs=y)

    pyro.clear_param_store()
    guide = ConditionalCAVIGuide(local_scales, ["s"], guide=lambda y: pyro.sample(
        "s", dist.LogNormal(torch.zeros(len(y), dtype=F64), 0.3).to_event(1)))  # fmt: skip
    for y in (Y[:5], Y):
        drawn = guide(y)
        assert drawn["s"].shape == (len(y),)
        assert guide.last_fit_.variational_distributions()["mu"].mean.shape == ()


def test_an_inner_fit_that_does_not_converge_is_warned_about_and_counted():
    """Two means coupled through their sum, under mean field: cut off before it converges
    (max_iter=3 then, tester 10: 16.6 where 6.2; the Newton step on the means now reaches
    q* within 3 sweeps, so max_iter=1 here) q* is not stationary, the envelope theorem
    fails and the gradient is biased; the guide says so."""

    def coupled(y):
        sigma = pyro.sample("sigma", dist.LogNormal(y.new_tensor(0.0), 1.0))
        a = pyro.sample("a", dist.Normal(y.new_tensor(0.0), 10.0))
        b = pyro.sample("b", dist.Normal(y.new_tensor(0.0), 10.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(a + b, sigma), obs=y)

    pyro.clear_param_store()
    guide = ConditionalCAVIGuide(coupled, ["sigma"], max_iter=1)
    with pytest.warns(RuntimeWarning, match=r"stopped at max_iter=1 sweeps without converging"):
        guide(Y)
    assert (guide.inner_fits_, guide.unconverged_) == (1, 1)


def test_a_guide_over_more_than_svi_sites_and_int_sized_data_are_handled():
    pyro.clear_param_store()
    with pytest.raises(ValueError, match=r"guide: it samples \['mu'\], which are not in svi_sites"):
        ConditionalCAVIGuide(normal_model, ["sigma"], guide=AutoNormal(normal_model))(Y)

    def sized(y, n):  # the plate's size an int argument
        mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 3.0))
        with pyro.plate("data", n):
            s = pyro.sample("s", dist.LogNormal(y.new_tensor(0.0), 0.5))
            pyro.sample("y", dist.Normal(mu, s), obs=y[:n])

    def s_guide(y, n):
        with pyro.plate("data", n):
            pyro.sample("s", dist.LogNormal(torch.zeros(n, dtype=F64), 0.3))

    pyro.clear_param_store()
    guide = ConditionalCAVIGuide(sized, ["s"], guide=s_guide)
    for n in (5, 8):  # the second size was refused as vectorized particles
        assert guide(Y, n)["s"].shape == (n,)
    autoguide = ConditionalCAVIGuide(sized, ["s"])
    autoguide(Y, 5)
    with pytest.raises(
        ValueError, match=r"in shape \(5,\) where the model's is \(8,\); a guide built"
    ):
        autoguide(Y, 8)


# --- a two-component mixture under a logit u: the inner problem has two local optima ---
MIXED = t([-2.1, -1.5, -2.4, 1.8, 2.2, 0.3])


def logit_mixture(y):
    u = pyro.sample("u", dist.Normal(y.new_tensor(0.0), 1.5))
    mu = pyro.sample("mu", dist.Normal(y.new_tensor([-1.0, 1.0]), 2.0).to_event(1))
    with pyro.plate("data", len(y)):
        z = pyro.sample("z", dist.Bernoulli(logits=u))
        pyro.sample("y", dist.Normal(Vindex(mu)[..., z.long()], 0.8), obs=y)


def inner_bound(guide, u: float) -> float:
    """L(u): the guide's inner fit at u (its own guide over u a point mass there)."""
    guide.guide = lambda y: pyro.sample("u", dist.Delta(y.new_tensor(u)))
    guide(MIXED)
    return guide.last_fit_.lower_bound_


def test_the_inner_bound_does_not_jump_where_one_start_changes_basin():
    """Tester 39's F1: fitted from one start, L(u) dropped 2.27 nats at u = −2.026 (the
    start's basin changed), and the reparameterized gradient, blind to the jump, came out
    +2.77 ± 0.02 where the ELBO's (finite differences on a grid) is −1.70. With the guide's
    default starts L(u) is the better optimum on both sides: it moves 0.01 in u by about
    its slope, 3 nats a unit there, not by the jump."""
    one = ConditionalCAVIGuide(logit_mixture, ["u"], tol=1e-12, n_init=1)
    assert inner_bound(one, -2.030) - inner_bound(one, -2.020) > 2.0  # the mechanism
    best = ConditionalCAVIGuide(logit_mixture, ["u"], tol=1e-12)
    left, right = inner_bound(best, -2.030), inner_bound(best, -2.020)
    assert abs(left - right) < 0.1 and left == pytest.approx(inner_bound(one, -2.030))
    assert best.multimodal_fits_ == 2 and best.autocavi_options["n_init"] == 4


def test_fits_whose_starts_reach_different_optima_are_counted_without_a_warning():
    # at u = 3.5 one start of four reaches −23.51, the other three −23.86; that one start
    # alone reached the best says nothing of a jump in L(u), so nothing is warned
    guide = ConditionalCAVIGuide(logit_mixture, ["u"], tol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        bound = inner_bound(guide, 3.5)
    assert bound == max(guide.last_fit_.start_bounds_) == pytest.approx(-23.5094, abs=1e-4)
    assert guide.multimodal_fits_ == 1


@pytest.mark.slow
def test_the_gradient_is_unbiased_where_the_inner_optimum_has_two_basins():
    """Tester 39's F1 at its q(u) = N(−2, 0.2), where one start's L(u) jumped: the gradient
    of the ELBO E_q[L(u) − log q(u)] by finite differences of its quadrature on a grid of
    L (141 inner fits over ±7 sds: the integrand is smooth once L has no jump), against
    the mean of 200 reparameterized gradients through the guide (sd per draw about 0.44 and
    0.49: 4 standard errors, 0.13). Measured: 2.404 and 0.972 against 2.408 ± 0.022 and
    0.976 ± 0.025 over 400 draws; from one start the draws gave +2.77 where the ELBO of
    that L gives −1.70."""
    loc, scale = -2.0, 0.2
    guide = ConditionalCAVIGuide(logit_mixture, ["u"], tol=1e-12)
    grid = np.linspace(loc - 7 * scale, loc + 7 * scale, 141)
    bounds = np.array([inner_bound(guide, float(u)) for u in grid])

    def elbo(m, s):  # Σ q(u)(L(u) − log q(u)) du on the grid
        log_q = dist.Normal(m, s).log_prob(torch.from_numpy(grid)).numpy()
        return float(np.sum(np.exp(log_q) * (bounds - log_q)) * (grid[1] - grid[0]))

    h = 1e-3
    d_loc = (elbo(loc + h, scale) - elbo(loc - h, scale)) / (2 * h)
    d_log_scale = (elbo(loc, scale * math.exp(h)) - elbo(loc, scale * math.exp(-h))) / (2 * h)

    def u_guide(y):
        m = pyro.param("m", y.new_tensor(loc))
        log_s = pyro.param("log_s", y.new_tensor(math.log(scale)))
        pyro.sample("u", dist.Normal(m, log_s.exp()))

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide.guide = u_guide
    draws = []
    for _ in range(200):
        loss = Trace_ELBO().differentiable_loss(logit_mixture, guide, MIXED)
        params = [pyro.param("m").unconstrained(), pyro.param("log_s").unconstrained()]
        draws.append(torch.stack(torch.autograd.grad(-loss, params)))
    mean = torch.stack(draws).mean(0)
    assert mean.tolist() == pytest.approx([d_loc, d_log_scale], abs=0.13)
