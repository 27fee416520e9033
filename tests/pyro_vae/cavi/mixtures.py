"""A small Gaussian mixture written as a user would, shared by the CAVI tests."""

import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex

from tests.pyro_vae.cavi.float64 import F64, t


def two_means(prior_scale: float = 3.0, shift: int = 0):
    """A model y ~ Σ_k w_k N(μ_k, 1), K = 2, w ~ Dirichlet(1, 1), μ_k ~ N(0, prior_scale²);
    observation n reads the assignment of element n − ``shift`` (0: its own)."""

    def model(y):
        w = pyro.sample("w", dist.Dirichlet(torch.ones(2, dtype=F64)))
        with pyro.plate("components", 2):
            mu = pyro.sample("mu", dist.Normal(t(0.0), t(prior_scale)))
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("y", dist.Normal(Vindex(mu)[..., z.roll(shift, -1)], 1.0), obs=y)

    return model
