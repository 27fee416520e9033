"""Per-dimension terms against torch's own sums: Σ_d of the per-dimension log-density is the
site's log-density, and Σ_d of the closed-form KL is the multivariate KL."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_vae.latent_dims import check_groups, group_count, per_dim_kl, per_dim_log_prob


def traces(guide_fn, prior_fn, scale=1.0):
    def model():
        with pyro.plate("data", 3), poutine.scale(scale=scale):
            pyro.sample("z", prior_fn)

    def guide():
        with pyro.plate("data", 3), poutine.scale(scale=scale):
            pyro.sample("z", guide_fn)

    guide_trace = poutine.trace(guide).get_trace()
    model_trace = poutine.trace(poutine.replay(model, guide_trace)).get_trace()
    for trace in (guide_trace, model_trace):
        trace.compute_log_prob()
    return model_trace.nodes["z"], guide_trace.nodes["z"]


def test_per_dim_terms_sum_to_the_sites_own():
    torch.manual_seed(0)
    q = dist.Normal(torch.randn(3, 2, 3), torch.rand(3, 2, 3) + 0.5).to_event(2)
    p = dist.Normal(torch.zeros(2, 3), 1.0).to_event(2)
    model_site, guide_site = traces(q, p, scale=2.0)
    log_q = per_dim_log_prob(guide_site, "z", "guide")
    assert log_q.shape == (3, 6)
    torch.testing.assert_close(log_q.sum(-1), guide_site["log_prob"])
    kl = per_dim_kl(model_site, guide_site, "z", analytic=True)
    torch.testing.assert_close(kl.sum(-1), 2.0 * torch.distributions.kl_divergence(q, p))
    mc = per_dim_kl(model_site, guide_site, "z", analytic=False)
    torch.testing.assert_close(mc.sum(-1), guide_site["log_prob"] - model_site["log_prob"])


def test_a_mixture_prior_is_refused_by_name():
    mixture = dist.MixtureSameFamily(
        dist.Categorical(torch.ones(2)), dist.Normal(torch.zeros(2, 4), 1.0).to_event(1)
    )
    model_site, guide_site = traces(dist.Normal(torch.zeros(4), 1.0).to_event(1), mixture)
    with pytest.raises(
        ValueError, match=r"the prior of latent site 'z' \(MixtureSameFamily with event shape"
    ):
        per_dim_kl(model_site, guide_site, "z", analytic=False)


def test_group_counts():
    assert group_count(None, 8, "z") == 1
    assert group_count("dims", 8, "z") == 8
    assert group_count(4, 8, "z") == 4
    with pytest.raises(
        ValueError, match=r"free_bits_groups: 3 does not divide the event size 8 of latent site 'z'"
    ):
        group_count(3, 8, "z")
    assert check_groups("dims") == "dims" and check_groups(None) is None


def test_a_mask_of_the_distribution_is_applied_per_dimension_as_poutine_mask_is():
    """``.mask`` on a diagonal Normal (outside ``.to_event``, or inside it at single
    coordinates) gives each dimension's term as a mask of the same elements does: masked
    ones count 0. It had been refused as a prior that does not factorize (tester DS's
    kind)."""
    keep = torch.tensor([True, False, True])
    inner = torch.tensor([[True, False], [True, True], [False, True]])
    guide_fn = dist.Normal(torch.tensor([[0.3, -1.0], [2.0, 0.5], [0.1, 0.2]]), 0.8)
    prior_fn = dist.Normal(torch.zeros(3, 2), 1.0)
    for counted in (keep.unsqueeze(-1), inner):  # model and guide masked alike
        if counted.shape[-1] == 1:
            masked = [fn.to_event(1).mask(keep) for fn in (guide_fn, prior_fn)]
        else:
            masked = [fn.mask(inner).to_event(1) for fn in (guide_fn, prior_fn)]
        pyro.set_rng_seed(0)  # the same draws, masked and not
        model_site, guide_site = traces(*masked)
        pyro.set_rng_seed(0)
        plain_model, plain_guide = traces(guide_fn.to_event(1), prior_fn.to_event(1))
        for analytic in (True, False):
            kl = per_dim_kl(model_site, guide_site, "z", analytic)
            unmasked = per_dim_kl(plain_model, plain_guide, "z", analytic)
            assert torch.allclose(kl, torch.where(counted, unmasked, 0.0))
        log_q = per_dim_log_prob(guide_site, "z", "guide")
        plain = per_dim_log_prob(plain_guide, "z", "guide")
        assert torch.allclose(log_q, torch.where(counted, plain, 0.0))
