"""``trace``: Pyro's Trace_ELBO, bit for bit by default, with sticking the landing on request."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_vae import estimators
from pyro_vae.estimators import TraceELBO, capabilities_of
from pyro_vae.estimators.compiled import CompiledELBO
from tests.pyro_vae.estimators.test_conformance import CASES, draws_of_the_guide_gradient


def grads_of(elbo, model, guide, x):
    pyro.set_rng_seed(5)
    loss = elbo.loss_and_grads(model, guide, x)
    store = pyro.get_param_store()
    grads = {k: store.get_param(k).unconstrained().grad.clone() for k in store.keys()}
    for k in store.keys():
        store.get_param(k).unconstrained().grad = None
    return loss, grads


@pytest.mark.parametrize("reparam", [True, False])
def test_the_default_is_pyros_trace_elbo_bit_for_bit(reparam):
    model, make_guide, _, x = CASES["local-subsampled"]
    guide = make_guide(reparam)
    ours = grads_of(estimators.get("trace", num_particles=3), model, guide, x)
    pyros = grads_of(Trace_ELBO(num_particles=3), model, guide, x)
    assert ours[0] == pyros[0]
    for key, grad in pyros[1].items():
        assert torch.equal(ours[1][key], grad), key


def test_stl_keeps_the_loss_and_the_model_gradient_and_changes_the_guides():
    def model(x):
        b = pyro.param("b", torch.tensor(0.2))
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z + b, 1.0), obs=x)

    def guide(x):
        m, t = pyro.param("m", torch.tensor(0.3)), pyro.param("t", torch.tensor(-0.4))
        pyro.sample("z", dist.Normal(m, t.exp()))

    x = torch.tensor(0.7)
    loss, full = grads_of(TraceELBO(), model, guide, x)
    stl_loss, stl = grads_of(TraceELBO(gradient="stl"), model, guide, x)
    assert stl_loss == loss
    assert torch.equal(stl["b"], full["b"])
    # the dropped score term, −∂log q/∂t = 1 − ε² for the draw z = m + exp(t) ε, is not 0
    assert not torch.equal(stl["t"], full["t"])


def test_stl_is_zero_at_the_exact_posterior_also_when_recorded():
    estimator = TraceELBO(num_particles=4, vectorize_particles=True, gradient="stl")
    assert draws_of_the_guide_gradient(estimator, 3).abs().max() < 1e-5
    compiled = CompiledELBO(estimator)
    assert draws_of_the_guide_gradient(compiled, 3).abs().max() < 1e-5
    assert compiled.num_recordings == 1


def test_capabilities_follow_the_gradient():
    assert not capabilities_of(TraceELBO()).needs_reparameterized
    assert capabilities_of(TraceELBO(gradient="stl")).needs_reparameterized
    assert capabilities_of(TraceELBO(gradient="stl")).recordable
    assert capabilities_of(Trace_ELBO()) == capabilities_of(TraceELBO())  # Pyro's own too


def test_bad_gradients_and_score_function_sites_are_refused():
    with pytest.raises(ValueError, match="gradient: 'dreg' is not one of trace's gradients.*iwae"):
        TraceELBO(gradient="dreg")
    with pytest.raises(ValueError, match="not valid for 'trace'.*dreg"):
        estimators.get("trace", dreg=True)
    model, make_guide, _, x = CASES["beta-bernoulli"]
    with pytest.raises(ValueError, match="guide site 'p' \\(Beta\\) is not reparameterizable"):
        TraceELBO(gradient="stl").loss_and_grads(model, make_guide(False), x)
