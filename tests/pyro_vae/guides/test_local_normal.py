"""The local (non-amortized) Normal guide: one free N(μ_n, σ_n²) per datapoint of one batch."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_vae.guides import LocalNormal
from pyro_vae.plates import data_plate

LOC = torch.tensor([[0.5, -1.0], [2.0, 0.0], [-0.3, 0.7]])
SCALE = torch.tensor([[1.0, 0.5], [0.2, 3.0], [1.5, 0.1]])


def test_encode_is_the_normal_it_was_given_and_owns_copies_of_them():
    loc, scale = LOC.clone().requires_grad_(), SCALE.clone()
    guide = LocalNormal(loc, scale)
    q = guide.encode(torch.zeros(3, 5))
    torch.testing.assert_close(q.loc, LOC)
    torch.testing.assert_close(q.scale, SCALE)
    with torch.no_grad():
        loc.add_(1.0)
        scale.mul_(2.0)
    torch.testing.assert_close(guide.encode(torch.zeros(3, 5)).loc, LOC)
    assert {n for n, _ in guide.named_parameters()} == {"loc", "log_scale"}
    torch.testing.assert_close(guide.log_scale.detach(), SCALE.log())


def test_a_zero_scale_is_clamped_to_one_in_a_million():
    guide = LocalNormal(torch.zeros(1, 2), torch.tensor([[0.0, 2.0]]))
    torch.testing.assert_close(guide.encode(torch.zeros(1, 1)).scale, torch.tensor([[1e-6, 2.0]]))


def test_its_site_is_one_event_per_datapoint_in_the_scaled_data_plate():
    guide = LocalNormal(LOC, SCALE, site="code")
    trace = poutine.trace(guide).get_trace(torch.zeros(3, 4), num_data=12)
    trace.compute_log_prob()
    site = trace.nodes["code"]
    assert site["value"].shape == (3, 2) and site["fn"].event_dim == 1
    assert [f.name for f in site["cond_indep_stack"]] == ["data"] and site["scale"] == 4.0
    by_hand = -0.5 * (((site["value"] - LOC) / SCALE) ** 2 + math.log(2 * math.pi)) - SCALE.log()
    torch.testing.assert_close(site["unscaled_log_prob"], by_hand.sum(-1))


def test_draws_are_reparameterized():
    guide = LocalNormal(LOC, SCALE)
    z = guide(torch.zeros(3, 1))
    z.sum().backward()
    torch.testing.assert_close(guide.loc.grad, torch.ones(3, 2))
    assert guide.log_scale.grad is not None and guide.log_scale.grad.abs().sum() > 0


def test_at_the_exact_posterior_the_elbo_is_the_log_likelihood():
    # z_n ~ N(0, 1), x_n | z_n ~ N(z_n, 1): p(z_n | x_n) = N(x_n / 2, 1/2) and p(x_n) = N(0, 2),
    # so with q = p(z | x) every draw's weight is p(x) and the ELBO has no Monte Carlo error.
    x = torch.tensor([[0.4], [-1.3], [2.2], [0.0]])

    def model(x, num_data=None):
        with data_plate(x, num_data):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    guide = LocalNormal(x / 2, torch.full_like(x, 0.5**0.5))
    loss = Trace_ELBO(num_particles=7).loss(model, guide, x)
    exact = dist.Normal(0.0, 2.0**0.5).log_prob(x).sum()
    assert loss == pytest.approx(-float(exact), rel=1e-5)


@pytest.mark.parametrize(
    "loc, scale, shapes",
    [
        (torch.zeros(3, 2), torch.ones(3, 1), "(3, 2) and (3, 1)"),
        (torch.zeros(3), torch.ones(3), "(3,) and (3,)"),
        (torch.zeros(1, 3, 2), torch.ones(1, 3, 2), "(1, 3, 2) and (1, 3, 2)"),
    ],
)
def test_loc_and_scale_must_be_one_n_by_latent_dim_shape(loc, scale, shapes):
    with pytest.raises(ValueError) as info:
        LocalNormal(loc, scale)
    assert str(info.value) == f"loc, scale: shapes {shapes} are not the same [N, latent_dim]"


def test_local_guide_holds_only_its_own_batch():
    guide = LocalNormal(torch.zeros(4, 2), torch.ones(4, 2))
    with pytest.raises(ValueError, match="x: 3 rows.*holds 4 datapoints"):
        guide(torch.zeros(3, 3))


def test_the_rows_the_evaluators_give_are_scored_with_their_own_q():
    # tester J's F6: a LocalNormal could be scored only on all N rows in one call, so
    # psis_khat_per_datapoint (batches of max_elements) and rows= refused it. Under the
    # evaluators' data plate it takes the rows given among its N: each row's ELBO is the
    # same at any batch size and on any subset named by rows= (the exact value: the
    # closed-form ELBO of N(μ_n, σ_n²) against z ~ N(0, 1), x_n ~ N(z, 1))
    from pyro_vae.diagnostics import psis_khat_per_datapoint
    from pyro_vae.evaluate import elbo_per_datapoint

    g = torch.Generator().manual_seed(0)
    x, n = torch.randn(12, generator=g, dtype=torch.float64), 12
    mu, sd = torch.randn(n, 1, generator=g, dtype=torch.float64), torch.full((n, 1), 0.6)
    guide = LocalNormal(mu, sd.double())

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(1, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z[..., 0], 1.0), obs=x)

    m, s = mu[:, 0], sd[:, 0].double()
    exact = -0.5 * math.log(2 * math.pi) - 0.5 * ((x - m) ** 2 + s**2)  # E log p(x | z)
    exact = exact - 0.5 * (m**2 + s**2 - 1) + torch.log(s)  # − KL(q ‖ N(0, 1))
    for batch_size in (12, 5):
        got = elbo_per_datapoint(model, guide, x, num_samples=20000, batch_size=batch_size)
        assert torch.allclose(got, exact, atol=0.05)  # se ≈ 0.01 per row at 20,000 draws
    rows = torch.arange(4, 9)
    got = elbo_per_datapoint(model, guide, x[4:9], num_samples=20000, rows=rows)
    assert torch.allclose(got, exact[4:9], atol=0.05)
    khat = psis_khat_per_datapoint(model, guide, x, num_samples=100, max_elements=300).khat
    assert khat.shape == (12,) and np.isfinite(khat).all()  # batches of 3 rows
    with pytest.raises(ValueError, match="x: 3 rows, but this local guide holds 12"):
        guide(x[:3])  # a plain call: all its rows, or none
