"""The local low-rank Normal guide: one free N(μ_n, diag σ_n² + V_n V_nᵀ) per datapoint."""

import pyro.poutine as poutine
import pytest
import torch

from pyro_vae.guides import LocalLowRankNormal
from tests.pyro_vae.guides import amortized_checks as checks

LOC = torch.tensor([[0.5, -1.0, 0.0], [2.0, 0.0, 1.0]])
SCALE = torch.tensor([[1.0, 0.5, 2.0], [0.2, 3.0, 1.0]])
FACTOR = torch.tensor([[[1.0], [0.0], [-1.0]], [[0.5], [0.5], [0.5]]])


def test_encode_is_the_low_rank_normal_it_was_given_as_copies():
    loc = LOC.clone()
    guide = LocalLowRankNormal(loc, SCALE, FACTOR)
    loc.add_(1.0)
    q = guide.encode(torch.zeros(2, 5))
    dense = torch.diag_embed(SCALE**2) + FACTOR @ FACTOR.mT
    torch.testing.assert_close(q.mean, LOC)
    torch.testing.assert_close(q.covariance_matrix, dense)
    z = q.sample((4,))
    expected = torch.distributions.MultivariateNormal(LOC, dense).log_prob(z)
    torch.testing.assert_close(q.log_prob(z), expected)
    assert {n for n, _ in guide.named_parameters()} == {"loc", "log_scale", "cov_factor"}


def test_its_site_is_one_event_per_row_and_draws_are_reparameterized():
    guide = LocalLowRankNormal(LOC, SCALE, FACTOR, site="code")
    trace = poutine.trace(guide).get_trace(torch.zeros(2, 4), num_data=8)
    site = trace.nodes["code"]
    assert site["value"].shape == (2, 3) and site["fn"].event_dim == 1 and site["scale"] == 4.0
    site["value"].sum().backward()
    assert all(p.grad is not None for p in guide.parameters())


def test_shapes_that_do_not_agree_are_refused():
    with pytest.raises(ValueError) as info:
        LocalLowRankNormal(LOC, SCALE, FACTOR[:1])
    assert str(info.value) == (
        "loc, scale, cov_factor: shapes (2, 3), (2, 3) and (1, 3, 1); expected [N, latent_dim], "
        "[N, latent_dim] and [N, latent_dim, rank] with rank >= 1"
    )
    # tester CN: rank 0 passed, then an IndexError in log_prob
    with pytest.raises(ValueError, match=r"\(2, 3, 0\); expected .* with rank >= 1"):
        LocalLowRankNormal(LOC, SCALE, FACTOR[..., :0])


def test_it_holds_only_its_own_batch():
    with pytest.raises(ValueError, match="x: 3 rows.*holds 2 datapoints"):
        LocalLowRankNormal(LOC, SCALE, FACTOR)(torch.zeros(3, 4))


@pytest.mark.usefixtures("one_thread")
def test_the_recorded_step_equals_the_eager_one():
    assert LocalLowRankNormal.recordable is True
    x = (torch.rand(6, 16, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    g = torch.Generator().manual_seed(2)
    loc, scale, factor = torch.randn(6, 3, generator=g), torch.ones(6, 3), torch.zeros(6, 3, 2)
    checks.check_recorded_steps(lambda: LocalLowRankNormal(loc, scale, factor), [x], 1)
