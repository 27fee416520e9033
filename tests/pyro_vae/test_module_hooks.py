"""Global module hooks that torch.compile runs untraced: a compiled network under the
estimators' checks, which watch module calls through such hooks."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.estimators import get
from pyro_vae.traces import VectorizationWarning


def _pair(decoder):
    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.zeros(x.shape[0], 2))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))

    return model, guide


@pytest.mark.parametrize("name", ["score", "iwae"])
def test_a_compiled_network_runs_under_the_checks_as_the_plain_one_does(name):
    """Tester DO: a decoder wrapped in ``torch.compile`` failed under ``score`` and ``iwae``
    ("UnspecializedNNModuleVariable(Sequential) is already tracked for mutation": Dynamo
    traced the checks' global hooks into its graph). It now gives the plain decoder's loss,
    vectorized, with no warning."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    x = torch.bernoulli(torch.full((16, 4), 0.3), generator=torch.Generator().manual_seed(1))
    losses = []
    for decoder in (net, torch.compile(net, backend="eager")):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        with warnings.catch_warnings():
            # no fallback to the loop (torch's own note that global hooks fire once more
            # for the compiled wrapper is let through: ours are written for that)
            warnings.simplefilter("error", VectorizationWarning)
            losses.append(get(name, num_particles=4).loss(*_pair(decoder), x))
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
