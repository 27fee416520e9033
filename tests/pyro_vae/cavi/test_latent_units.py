import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from pyro_vae.cavi.exponential_families import NotConjugateError
from pyro_vae.cavi.latent_units import find_latents
from tests.pyro_vae.cavi.float64 import F64, t


def test_latents_outside_plates_or_subsampled_are_refused():
    def unplated():
        pyro.sample("v", dist.Normal(torch.zeros(3, dtype=F64), 1.0))

    with pytest.raises(NotConjugateError, match="'v': batch dim -1 \\(size 3\\).*no pyro.plate"):
        find_latents(poutine.trace(unplated).get_trace())

    def subsampled():
        with pyro.plate("data", 10, subsample_size=5):
            pyro.sample("z", dist.Normal(t(0.0), t(1.0)))

    with pytest.raises(NotConjugateError, match="'z': in plate 'data', which subsamples 5 of"):
        find_latents(poutine.trace(subsampled).get_trace())
