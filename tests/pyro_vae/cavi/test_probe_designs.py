import pyro.poutine as poutine
import torch

from pyro_vae.cavi.latent_units import find_latents
from pyro_vae.cavi.probe_designs import probe_design, unexpanded
from pyro_vae.cavi.probe_runs import Runs
from tests.pyro_vae.cavi.factors import normal_gamma
from tests.pyro_vae.cavi.float64 import F64, t


def test_the_design_is_the_tensor_product_of_the_members_statistics_at_each_point():
    # a likelihood of two global latents: each point's row is (1, μ, μ²) ⊗ (1, τ, log τ),
    # written out here, the first member's statistic the major index
    latents = find_latents(poutine.trace(normal_gamma).get_trace(t([0.1, 0.2])))
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(7, generator=g, dtype=F64)
    tau = torch.rand(7, generator=g, dtype=F64) + 0.5
    design = probe_design([latents["mu"], latents["tau"]], Runs({"mu": mu, "tau": tau}, {}), 1)
    first = torch.stack([torch.ones_like(mu), mu, mu**2], -1)
    second = torch.stack([torch.ones_like(tau), tau, tau.log()], -1)
    expected = (first[:, :, None] * second[:, None, :]).flatten(1)
    assert design.shape == (7, 1, 9)
    torch.testing.assert_close(design[:, 0], expected, rtol=1e-15, atol=0)


def test_a_value_the_same_at_every_element_is_cut_to_one_element_there():
    # a shared discrete probe point: one value per point expanded along the plate (stride 0)
    shared = torch.tensor([[0], [2], [1]]).expand(3, 5)
    drawn = torch.randint(0, 3, (3, 5), generator=torch.Generator().manual_seed(0))
    cut = unexpanded({"z": shared, "b": drawn})
    assert cut["z"].shape == (3, 1) and cut["z"][:, 0].tolist() == [0, 2, 1]
    assert cut["b"] is drawn
