import pyro.distributions as dist
import torch

from pyro_vae.cavi.exponential_families import GammaFamily, NormalFamily
from pyro_vae.cavi.factor_form import Factor, batch_view, to_natural
from pyro_vae.cavi.latent_units import Latent
from pyro_vae.cavi.probe_frames import frame_of, to_local
from tests.pyro_vae.cavi.float64 import F64, t


def test_a_latent_s_batch_sits_right_aligned_and_a_mixture_s_components_along_its_k_axis():
    # a likelihood [N] reading a global latent; a mixture's factor [N, K]: its selector z
    # runs along the data, its components θ along the final K-axis
    plain = Factor("y", "Normal", ("mu",), torch.zeros(6, 3, dtype=F64), rank=1)
    assert batch_view(plain, "mu", ()) == (1,)
    assert batch_view(plain, "mu", (6,)) == (6,)
    mixture = Factor("y", "Normal", ("theta",), torch.zeros(6, 4, 3, dtype=F64), rank=2,
                     selector="z", components=frozenset({"theta"}))  # fmt: skip
    assert batch_view(mixture, "theta", (4,)) == (1, 4)
    assert batch_view(mixture, "z", (6,)) == (6, 1)


def test_coefficients_solved_in_frame_coordinates_give_the_same_log_density_on_natural_ones():
    # D on the local statistics T(v) ⊗ T(u), v = (μ − 3)/0.5 and u = τ/c (the frames of
    # q(μ) = N(3, 0.5²) and q(τ) = Gamma(4, 2)): C = to_natural(D) on T(μ) ⊗ T(τ) must give
    # the same log f at every point, the local statistics taken by the frame's own map
    mu, tau = NormalFamily("mu", torch.Size()), GammaFamily("tau", torch.Size())
    latents = {n: Latent(n, f, torch.Size(), frozenset(), None, (n,))
               for n, f in [("mu", mu), ("tau", tau)]}  # fmt: skip
    frames = {"mu": frame_of(mu, dist.Normal(t(3.0), t(0.5))),
              "tau": frame_of(tau, dist.Gamma(t(4.0), t(2.0)))}  # fmt: skip
    g = torch.Generator().manual_seed(0)
    local = torch.randn(3, 3, generator=g, dtype=F64)
    factor = Factor("y", "Normal", ("mu", "tau"), local, rank=0)
    natural = to_natural(factor, latents, frames).coefficients
    x = 3.0 + torch.randn(20, generator=g, dtype=F64)
    y = torch.rand(20, generator=g, dtype=F64) * 4 + 0.1
    (v,) = to_local(mu, frames["mu"], (x,))
    (u,) = to_local(tau, frames["tau"], (y,))

    def log_f(c, a, b):  # Σ C_ij T_i(a) T_j(b), with T = (1, a, a²) and (1, b, log b)
        ta = torch.stack([torch.ones_like(a), a, a * a], -1)
        tb = torch.stack([torch.ones_like(b), b, b.log()], -1)
        return torch.einsum("ij,ni,nj->n", c, ta, tb)

    torch.testing.assert_close(log_f(natural, x, y), log_f(local, v, u), rtol=1e-12, atol=1e-12)
