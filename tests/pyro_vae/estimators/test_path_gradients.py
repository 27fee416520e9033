"""log q with the guide's parameters detached, for any distribution a guide site holds."""

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import pyro.poutine as poutine
import pytest
import torch

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
