import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.cavi.exponential_families import NotConjugateError
from tests.pyro_vae.cavi.float64 import F64, t


def test_a_component_in_a_plate_the_factor_does_not_read_at_its_own_element_is_refused():
    """Group-specific cluster means mu [K, G] in plates of components and groups, read as
    Vindex(mu)[..., z, group]: the groups' plate is none of the factor's (a data index
    picks it), so mu is no mixture component; the refusal says what a component is and
    names the form of a diagonal-covariance mixture that fits (tester 23 met three
    refusals, each sending to another; that form is now fitted, see
    test_mixture_components.py)."""
    from pyro.ops.indexing import Vindex

    from pyro_vae.cavi import AutoCAVI

    y = torch.randn(12, generator=torch.Generator().manual_seed(0), dtype=F64)
    group = torch.arange(12) % 4

    def model(y):
        weights = pyro.sample("w", dist.Dirichlet(torch.ones(2, dtype=F64)))
        with pyro.plate("components", 2, dim=-2), pyro.plate("groups", 4, dim=-1):
            mu = pyro.sample("mu", dist.Normal(t(0.0), t(1.0)))
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(weights))
            pyro.sample("y", dist.Normal(Vindex(mu)[..., z, group], 1.0), obs=y)

    with pytest.raises(NotConjugateError, match=r"component is a latent in a plate.*"
                       r"batch shape \(2, 4\).*torch.arange\(D\)"):  # fmt: skip
        AutoCAVI(model).fit(y)
