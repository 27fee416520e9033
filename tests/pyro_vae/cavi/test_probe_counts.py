import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from pyro_vae.cavi.latent_units import find_latents
from tests.pyro_vae.cavi.float64 import F64, t


def _mixed_latents(plate_size):
    """A Dirichlet weight (global), a Categorical z and a Bernoulli b in a plate."""

    def model():
        w = pyro.sample("w", dist.Dirichlet(torch.ones(3, dtype=F64)))
        with pyro.plate("data", plate_size):
            pyro.sample("z", dist.Categorical(w))
            pyro.sample("b", dist.Bernoulli(t(0.3)))

    return find_latents(poutine.trace(model).get_trace())


@pytest.mark.parametrize("members", [("w", "z"), ("z", "b"), ("w", "z", "b")])
@pytest.mark.parametrize("count", [4, 9, 13, 30, 80])
def test_counting_decides_the_rank_of_a_design_with_discrete_members(members, count):
    # the rows-per-combination count against the SVD's rank of every element's design
    # (independent), at sizes from too few rows to enough, with balanced and random probes
    from pyro_vae.cavi.first_trace import _probe_values
    from pyro_vae.cavi.probe_counts import _full_rank
    from pyro_vae.cavi.probe_designs import probe_design
    from pyro_vae.cavi.probe_runs import Runs

    latents = _mixed_latents(5)
    chosen = [latents[n] for n in members]
    g = torch.Generator().manual_seed(count)
    for trial in range(10):
        draws = [_probe_values(latents, g) for _ in range(count)]
        values = {k: torch.stack([d[k] for d in draws]) for k in draws[0]}
        if trial % 2:  # random Categorical values (the probe's are balanced per element)
            values["z"] = torch.randint(0, 3, values["z"].shape, generator=g)
        designs = probe_design(chosen, Runs(values, {}), 1).movedim(0, -2)
        by_svd = bool(torch.linalg.matrix_rank(designs).min() == designs.shape[-1])
        assert _full_rank(chosen, values, 1) == by_svd
