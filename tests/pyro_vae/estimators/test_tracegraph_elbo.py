"""Tests of pyro_vae.estimators.tracegraph_elbo: Pyro's TraceGraph_ELBO, checked first."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceGraph_ELBO

from pyro_vae.estimators.tracegraph_elbo import TraceGraphELBO


def _pair(guide_masks: bool):
    def model(x):
        with pyro.plate("data", 3), pyro.poutine.mask(mask=torch.tensor([True, False, True])):
            z = pyro.sample("z", dist.Bernoulli(0.3))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        mask = torch.tensor([True, False, True]) if guide_masks else True
        with pyro.plate("data", 3), pyro.poutine.mask(mask=mask):
            pyro.sample("z", dist.Bernoulli(0.6))

    return model, guide


def test_the_loss_is_pyros_on_the_same_draws():
    model, guide = _pair(guide_masks=True)
    x = torch.tensor([0.5, 0.0, -1.0])
    losses = []
    for elbo in (TraceGraphELBO(num_particles=4), TraceGraph_ELBO(num_particles=4)):
        pyro.set_rng_seed(0)
        losses.append(elbo.loss(model, guide, x))
    assert losses[0] == losses[1]


def test_a_guide_scoring_what_the_model_masks_off_is_refused():
    """Pyro's own class takes it: the masked element's entropy −Σ q log q enters the
    loss, which is then no bound on the masked model's log p(x)."""
    model, guide = _pair(guide_masks=False)
    with pytest.raises(ValueError, match="site 'z' has elements the model masks off"):
        TraceGraphELBO(num_particles=2).loss(model, guide, torch.tensor([0.5, 0.0, -1.0]))
