"""log q with the guide's parameters detached, for any distribution a guide site holds."""

import math

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import pyro.poutine as poutine
import pytest
import torch

from pyro_vae import estimators
from pyro_vae.estimators.path_gradients import (
    check_gradient,
    refuse_dependent_sites,
    refuse_unreparameterized,
    stopped_guide_trace,
    stopped_log_prob,
)
from pyro_vae.traces import stack_particles


def normal_site():
    loc = torch.tensor([0.3, -0.2], requires_grad=True)
    fn = dist.Normal(loc, 0.5).to_event(1)
    return loc, {"fn": fn, "value": fn.rsample()}


def test_the_value_keeps_its_path_and_the_parameters_are_held_still():
    loc, site = normal_site()
    stopped = stopped_log_prob(site)
    torch.testing.assert_close(stopped, site["fn"].log_prob(site["value"]))
    (through_value,) = torch.autograd.grad(stopped, loc)
    # d/d loc of log N(loc + 0.5 ε; stop(loc), 0.5) = −(z − loc)/0.25 along the path
    torch.testing.assert_close(through_value, -(site["value"] - loc).detach() / 0.25)
    (score_and_path,) = torch.autograd.grad(site["fn"].log_prob(site["value"]), loc)
    torch.testing.assert_close(score_and_path, torch.zeros(2))  # location family: they cancel


def test_a_flow_is_detached_with_its_transforms():
    torch.manual_seed(0)
    flow = T.affine_autoregressive(2, hidden_dims=[4])
    fn = dist.TransformedDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), [flow])
    value = fn.rsample()
    stopped = stopped_log_prob({"fn": fn, "value": value})
    torch.testing.assert_close(stopped, fn.log_prob(value), atol=1e-5, rtol=1e-5)
    params = list(flow.parameters())
    grads = torch.autograd.grad(stopped, params, allow_unused=True)
    direct = [g for g in grads if g is not None]
    assert direct, "the value still carries the path back to the flow's parameters"
    (of_value,) = torch.autograd.grad(
        stopped_log_prob({"fn": fn, "value": value.detach().requires_grad_()}),
        params[:1],
        allow_unused=True,
    )
    assert of_value is None  # and nothing reaches them directly


def test_looped_particles_are_scored_each_with_their_own_distribution():
    def guide():
        pyro.sample("z", dist.Normal(pyro.param("m", torch.tensor(0.1)), 1.0))

    pairs = []
    for _ in range(3):
        trace = poutine.trace(guide).get_trace()
        trace.compute_log_prob()
        pairs.append((trace, trace))
    _, stacked = stack_particles(pairs, 1)
    site = stacked.nodes["z"]
    torch.testing.assert_close(stopped_log_prob(site), site["log_prob"])
    copy = stopped_guide_trace(stacked)
    torch.testing.assert_close(copy.nodes["z"]["log_prob"], site["log_prob"])
    assert "score_parts" not in copy.nodes["z"] and stacked.nodes["z"] is site


def test_refusals_name_the_site_and_the_choices():
    with pytest.raises(ValueError, match="gradient: 'x' is not one of est's gradients.*'stl'"):
        check_gradient("x", ("reparam", "stl"), "est")
    trace = poutine.trace(lambda: pyro.sample("c", dist.Bernoulli(0.5))).get_trace()
    with pytest.raises(ValueError, match="guide site 'c' \\(Bernoulli\\) is not reparam"):
        refuse_unreparameterized(trace, "est", "stl")

    def hierarchical():
        a = pyro.sample("a", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))
        pyro.sample("b", dist.Normal(2 * a, 1.0))

    with pytest.raises(ValueError, match="site 'b' is drawn from a distribution that depends"):
        refuse_dependent_sites(poutine.trace(hierarchical).get_trace(), "est", "stl")

    def mean_field():
        m = pyro.param("m", torch.tensor(0.0))
        pyro.sample("a", dist.Normal(m, 1.0))
        pyro.sample("b", dist.Normal(m, 1.0))

    refuse_dependent_sites(poutine.trace(mean_field).get_trace(), "est", "stl")  # no error


def lognormal_model(x):
    """log s ~ N(0, 1), log x_n | s ~ N(log s, 1): the posterior of log s is
    N(Σ log x_n / (1 + n), 1 / (1 + n)), so AutoNormal (a Normal on log s, then the Delta
    s = exp(log s) with its log-Jacobian) can hold it exactly."""
    s = pyro.sample("s", dist.LogNormal(x.new_tensor(0.0), 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.LogNormal(s.log(), 1.0), obs=x)


ESTIMATES = [
    ("trace", {"gradient": "stl"}),
    ("iwae", {"gradient": "stl", "num_particles": 3}),
    ("iwae", {"gradient": "dreg", "num_particles": 3}),
]


@pytest.mark.parametrize("name, options", ESTIMATES)
def test_autonormal_at_the_exact_posterior_gets_a_zero_path_gradient(name, options):
    """AutoNormal's constrained site is a Delta computed from its unconstrained draw: it was
    refused as a dependent site (tester M). Let through, its log-Jacobian must keep its path
    (detached, the STL gradient at q = p(z | x) was not 0) and DReG must not count its slope
    twice (it was 0.18 and −0.74). At the exact posterior every draw's gradient is 0."""
    from pyro.infer.autoguide import AutoNormal

    from pyro_vae import estimators

    x = torch.tensor([0.5, 2.0, 1.3], dtype=torch.float64)
    pyro.clear_param_store()
    guide = AutoNormal(lognormal_model)
    guide(x)
    with torch.no_grad():
        guide.locs.s.copy_(x.log().sum() / 4)
        guide.scales.s = x.new_tensor(0.5)  # √(1 / (1 + n))
    estimator = estimators.get(name, **options)
    for seed in range(3):
        pyro.set_rng_seed(seed)
        for p in guide.parameters():
            p.grad = None
        estimator.loss_and_grads(lognormal_model, guide, x)
        for p in guide.parameters():
            assert p.grad is not None and abs(p.grad.item()) < 1e-12


def test_a_deterministic_guide_site_is_not_a_dependent_draw():
    """``pyro.deterministic`` in a guide is a Delta of earlier draws, not a draw whose
    parameters STL detaches: it was refused (tester M)."""

    def guide():
        a = pyro.sample("a", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))
        pyro.deterministic("a_squared", a**2)

    refuse_dependent_sites(poutine.trace(guide).get_trace(), "est", "stl")  # no error


def test_a_guide_that_observes_a_label_is_no_draw_to_refuse():
    """Tester CW: a guide that observes a label (``obs=y`` in model and guide) was refused
    by ``iwae`` (every gradient) and ``trace`` with ``stl`` as "not reparameterizable",
    where every other estimator took it. Expected: taken; IWAE at K = 1 estimates the
    same objective as ``trace`` (within 4 standard errors of 300 draws each)."""
    import math
    import statistics

    from pyro_vae import estimators

    torch.manual_seed(0)
    x, y = torch.randn(20), (torch.rand(20) > 0.5).float()

    def model(x, y):
        with pyro.plate("data", 20):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("y", dist.Bernoulli(logits=z), obs=y)
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x, y):
        with pyro.plate("data", 20):
            z = pyro.sample("z", dist.Normal(0.5 * x, 1.0))
            pyro.sample("y", dist.Bernoulli(logits=z), obs=y)

    for gradient in ("reparam", "dreg", "stl"):
        estimators.get("iwae", num_particles=3, gradient=gradient).loss_and_grads(
            model, guide, x, y
        )
    estimators.get("trace", gradient="stl").loss_and_grads(model, guide, x, y)
    pyro.set_rng_seed(1)
    means = []
    for elbo in (estimators.get("iwae", num_particles=1), estimators.get("trace")):
        draws = [elbo.loss(model, guide, x, y) for _ in range(300)]
        means.append((statistics.mean(draws), statistics.stdev(draws) / 300**0.5))
    (a, se_a), (b, se_b) = means
    assert abs(a - b) < 4 * math.hypot(se_a, se_b)


@pytest.mark.parametrize(
    "name, options",
    [("iwae", {}), ("iwae", {"gradient": "dreg", "num_particles": 2}),
     ("trace", {"gradient": "stl"}), ("analytic-kl", {})],
)  # fmt: skip
def test_a_pathwise_estimator_refuses_a_guide_factor_without_a_path(name, options):
    """A guide's pyro.factor(..., has_rsample=False) stands for draws without a path
    (Pyro's docs): the pathwise-only estimators refuse it by name (after tester FE); with
    has_rsample=True they take it."""

    def model():
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(0.7))

    def guide(has_rsample):
        a = pyro.param("a", torch.tensor(1.0))
        pyro.sample("z", dist.Normal(a, 1.0))
        pyro.factor("penalty", 3 * a**2, has_rsample=has_rsample)

    pyro.clear_param_store()
    estimator = estimators.get(name, **options)
    with pytest.raises(ValueError, match="guide site 'penalty' is a pyro.factor with has_rsa"):
        estimator.loss_and_grads(model, lambda: guide(False))
    assert math.isfinite(estimator.loss_and_grads(model, lambda: guide(True)))
