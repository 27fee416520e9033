"""VIMCO against the linear-Gaussian model (exact log p(x)) and against IWAE's gradient."""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from pyro_vae.estimators import IWAELBO, VIMCO
from pyro_vae.plates import data_plate
from tests.pyro_vae.test_evaluate import POST_GAIN, POST_VAR, B, exact_log_likelihood, model

X = torch.tensor([[0.5, -1.0, 0.2], [1.5, 0.3, 1.1], [-0.7, -2.0, 0.0], [0.1, 1.0, 0.4]])


def make_guide(gain, log_scale):
    def guide(x, num_data=None):
        loc = (x - B) @ (gain * POST_GAIN).T
        scale = (POST_VAR.sqrt() * log_scale.exp()).expand_as(loc)
        with data_plate(x, num_data):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return guide


@pytest.mark.parametrize("k", [2, 5])
def test_exact_guide_gives_minus_log_likelihood(k):
    guide = make_guide(torch.tensor(1.0), torch.tensor(0.0))
    loss = VIMCO(num_particles=k).loss(model, guide, X, num_data=8)
    assert loss == pytest.approx(-2 * exact_log_likelihood(X).sum().item(), abs=1e-3)


def test_value_equals_the_iwae_bound_for_the_same_draws():
    guide = make_guide(torch.tensor(0.7), torch.tensor(0.3))
    vimco, iwae = VIMCO(num_particles=4), IWAELBO(num_particles=4)
    vimco.loss(model, guide, X)  # both guess plate nesting once
    iwae.loss(model, guide, X)
    pyro.set_rng_seed(3)
    a = vimco.loss(model, guide, X)
    pyro.set_rng_seed(3)
    assert a == pytest.approx(iwae.loss(model, guide, X), rel=1e-5)


@pytest.mark.parametrize("c", [1.0, 3.0])
def test_mean_gradient_matches_the_pathwise_iwae_gradient(c):
    # Both are unbiased for the gradient of E[L_K]; compare means within 4 standard errors.
    # VIMCO's pair is under poutine.scale(c) (model and guide), a multiplier of the whole
    # objective, so its gradient is compared with c times IWAE's of the unscaled pair.
    gain = torch.tensor(0.7, requires_grad=True)
    log_scale = torch.tensor(0.3, requires_grad=True)
    guide = make_guide(gain, log_scale)
    x = X.repeat(50, 1)
    means = {}
    scaled = [poutine.scale(fn, scale=c) for fn in (model, guide)]
    runs = {"vimco": (VIMCO(num_particles=4), *scaled, 1.0), "iwae": (IWAELBO(4), model, guide, c)}
    for name, (estimator, model_, guide_, factor) in runs.items():
        draws = factor * torch.stack(
            [
                torch.stack(
                    torch.autograd.grad(
                        estimator.differentiable_loss(model_, guide_, x), [gain, log_scale]
                    )
                )
                for _ in range(300)
            ]
        )
        means[name] = (draws.mean(0), draws.std(0) / math.sqrt(len(draws)))
    (mv, sv), (mi, si) = means["vimco"], means["iwae"]
    assert torch.all((mv - mi).abs() < 4 * torch.sqrt(sv**2 + si**2))
    assert torch.all(mi.abs() > 4 * si)  # the gradient is far from zero: the test has power


def test_bad_use_is_explained():
    with pytest.raises(ValueError, match="num_particles: 1 is too few"):
        VIMCO(num_particles=1)


def test_a_model_with_a_global_latent_gets_the_joint_bound():
    # z ~ N(0, 1), x_i ~ N(z, 1), q = N(0, 1): no per-datapoint factorization, so the bound
    # is on log p(X) jointly; at q = prior its K-sample value equals IWAE's at equal draws.
    def model(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("obs", len(x)):
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        pyro.sample("z", dist.Normal(0.0, 1.0))

    x = torch.tensor([0.3, -0.2, 1.1])
    pyro.set_rng_seed(0)
    vimco = VIMCO(8).loss(model, guide, x)
    pyro.set_rng_seed(0)
    iwae = IWAELBO(8).loss(model, guide, x)
    assert vimco == pytest.approx(iwae, rel=1e-6)
    subsampled = dist.Normal(0.0, 1.0)

    def subsampled_model(x):
        z = pyro.sample("z", subsampled)
        with pyro.plate("obs", 6, subsample=torch.arange(len(x))):
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    with pytest.raises(ValueError, match="outside the subsampled per-datapoint plate 'obs'"):
        VIMCO(2).loss(subsampled_model, guide, x)


@pytest.mark.parametrize("spread", [0.1, 5.0, 60.0])
def test_leave_one_out_bounds_match_the_k_replaced_copies(spread):
    # The O(K·N) formula against the definition: K copies of the log-weights, copy k with
    # l_k replaced by the mean of the others, each log-sum-exp'd. Float64, so the only
    # difference is rounding; spread 60 puts the largest weight e^60 above the rest.
    from pyro_vae.estimators.vimco import _leave_one_out_bounds

    generator = torch.Generator().manual_seed(0)
    lw = spread * torch.randn(7, 5, generator=generator, dtype=torch.float64)
    lw[:, 0] = lw[0, 0]  # a column of ties
    k = lw.shape[0]
    others_mean = (lw.sum(0, keepdim=True) - lw) / (k - 1)
    eye = torch.eye(k, dtype=torch.bool).unsqueeze(-1)
    replaced = torch.where(eye, others_mean.unsqueeze(1), lw.unsqueeze(0))
    direct = torch.logsumexp(replaced, dim=1) - math.log(k)
    assert torch.allclose(_leave_one_out_bounds(lw), direct, rtol=1e-12, atol=1e-12)


def test_beta_weighs_the_bound_not_the_score():
    # β-IWAE with a Bernoulli latent: the exact gradient of E[L̂_K] by enumerating the
    # K = 2 draws is +24.0; scaling the score ∇ log q(h) by β as well gave +1185 ± 3
    # (tester A's F1). 300 draws: a standard error of 1.5.
    import itertools

    from pyro_vae.annealing import ScaleLatents

    n, k, beta, f64 = 400, 2, 4.0, torch.float64
    x = torch.full((n,), 0.7, dtype=f64)

    def model(x):
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Bernoulli(torch.tensor(0.3, dtype=f64)))
            pyro.sample("x", dist.Normal(2 * z - 1, 1.0), obs=x)

    def guide(x):
        phi = pyro.param("phi", torch.tensor(0.4, dtype=f64))
        with pyro.plate("data", n):
            pyro.sample("z", dist.Bernoulli(logits=phi.expand(n)))

    phi = torch.tensor(0.4, dtype=f64, requires_grad=True)
    q, bound = dist.Bernoulli(logits=phi), 0.0
    for draws in itertools.product([0.0, 1.0], repeat=k):
        h = torch.tensor(draws, dtype=f64)
        log_w = dist.Normal(2 * h - 1, 1.0).log_prob(x[0]) + beta * (
            dist.Bernoulli(torch.tensor(0.3, dtype=f64)).log_prob(h) - q.log_prob(h)
        )
        bound = bound + q.log_prob(h).sum().exp() * (torch.logsumexp(log_w, 0) - math.log(k))
    exact = torch.autograd.grad(-n * bound, phi)[0].item()
    scaled = ScaleLatents(beta)
    model, guide = scaled(model), scaled.for_guide()(guide)
    estimator = VIMCO(num_particles=k)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    grads = []
    for _ in range(300):
        loss = estimator.differentiable_loss(model, guide, x)
        grads.append(torch.autograd.grad(loss, [pyro.param("phi").unconstrained()])[0])
    grads = torch.stack(grads)
    mean, se = grads.mean().item(), (grads.std() / math.sqrt(300)).item()
    assert exact == pytest.approx(24.004, abs=1e-3)
    assert abs(mean - exact) < 4 * se


def test_a_point_mass_guide_site_gets_the_bounds_pathwise_gradient():
    """A Delta site (a MAP point) keeps its path: detached like a draw, it got 0 (tester M).
    The expected value is ∂L_2/∂v by enumeration: L_2 = Σ_{z¹, z²} q(z¹) q(z²) log((w(z¹) +
    w(z²)) / 2) over the 8 × 8 pairs of the three Bernoulli draws (θ is global, so the
    weights are joint)."""
    import itertools

    from tests.pyro_vae.estimators.test_score_function import MAP_X, mean_map_gradient

    v = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    q = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=torch.float64)
    log_q = dist.Bernoulli(logits=q).log_prob(states).sum(-1)
    log_w = (
        dist.Normal(0.0, 1.0).log_prob(v)
        + dist.Bernoulli(logits=v).log_prob(states).sum(-1)
        + dist.Normal(states, 1.0).log_prob(MAP_X).sum(-1)
        - log_q
    )
    pairs = torch.logaddexp(log_w[:, None], log_w[None, :]) - math.log(2)
    bound = ((log_q[:, None] + log_q[None, :]).exp() * pairs).sum()
    (exact,) = torch.autograd.grad(-bound, v)
    mean, se = mean_map_gradient(VIMCO(num_particles=2), 300)
    assert se > 0 and abs(mean - exact.item()) < 4 * se, (mean, se, exact.item())


# K1: poutine.scale(c) around model and guide multiplies the whole objective; folded into
# each log-weight, VIMCO's value (IWAE's too) at K = 50 came out above c · log p(x).
C = 3.0


@pytest.mark.parametrize("k", [2, 5])
def test_common_scale_at_the_exact_posterior_gives_c_log_likelihood(k):
    guide = make_guide(torch.tensor(1.0), torch.tensor(0.0))
    pair = poutine.scale(model, scale=C), poutine.scale(guide, scale=C)
    loss = VIMCO(num_particles=k).loss(*pair, X)
    assert loss == pytest.approx(-C * exact_log_likelihood(X).sum().item(), abs=1e-3)


@pytest.mark.parametrize("k", [5, 50])
def test_common_scale_multiplies_value_and_gradient_of_the_same_draws(k):
    gain = torch.tensor(0.7, requires_grad=True)
    log_scale = torch.tensor(0.3, requires_grad=True)
    guide = make_guide(gain, log_scale)
    results = []
    for pair in ((model, guide), (poutine.scale(model, scale=C), poutine.scale(guide, scale=C))):
        pyro.set_rng_seed(7)
        loss = VIMCO(num_particles=k).differentiable_loss(*pair, X)
        results.append((loss.detach(), *torch.autograd.grad(loss, [gain, log_scale])))
    for plain, rescaled in zip(*results, strict=True):
        torch.testing.assert_close(rescaled, C * plain, rtol=1e-5, atol=1e-5)
    pyro.set_rng_seed(7)  # and the value is IWAE's of the same draws
    iwae = IWAELBO(num_particles=k).loss(*(poutine.scale(f, scale=C) for f in (model, guide)), X)
    assert results[1][0].item() == pytest.approx(iwae, rel=1e-5)
