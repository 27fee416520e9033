import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import config_enumerate

from pyro_vae.annealing import ScaleLatents
from pyro_vae.estimators import TraceEnumELBO


def entangled():
    """y_n enumerated in the model, z_n | y_n ~ N(y_n, 1) drawn by the guide: z's prior
    is a sum over y, so it has no KL term of its own."""

    @config_enumerate
    def model(x):
        with pyro.plate("data", len(x)):
            y = pyro.sample("y", dist.Bernoulli(0.5))
            z = pyro.sample("z", dist.Normal(y, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x / 2, 0.7))

    return model, guide


def test_free_bits_refuse_a_latent_whose_prior_depends_on_an_enumerated_site():
    model, guide = entangled()
    match = r"free_bits: the prior term of latent site 'z' varies with an enumerated"
    with pytest.raises(ValueError, match=match):
        TraceEnumELBO(max_plate_nesting=1, free_bits=0.5).loss(model, guide, torch.zeros(3))


def test_beta_on_such_a_latent_says_why_it_cannot_apply():
    model, guide = entangled()
    TraceEnumELBO(max_plate_nesting=1).loss(model, guide, torch.zeros(3))  # β = 1 is fine
    with pytest.raises(ValueError, match=r"beta: a latent site drawn by the guide has a prior"):
        TraceEnumELBO(max_plate_nesting=1).loss(
            ScaleLatents(2.0)(model), ScaleLatents(2.0, guide=True)(guide), torch.zeros(3)
        )
