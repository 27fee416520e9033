"""Tests of pyro_vae.site_masks: the elements a site's log-density counts."""

import pyro.distributions as dist
import torch

from pyro_vae.site_masks import (
    counted_batch_elements,
    counted_elements,
    masks_inside_event,
    sampling_log_prob,
    site_masks,
    without_masks,
)


def test_one_walk_reads_a_site_s_masks_without_making_a_tensor():
    """Review R1: one walk of a site's wrappers serves both the check whether a site is
    masked and the anded mask. On the meta device (the device tests') it reads a site with
    no mask without making a tensor, and it spreads each mask over the dims a .to_event
    inside it made event dims."""
    meta = torch.device("meta")
    normal = dist.Normal(torch.zeros(2, 3, device=meta), 1.0, validate_args=False)
    plain = {"fn": normal.to_event(1), "mask": None, "value": torch.zeros(2, 3, device=meta)}
    assert site_masks(plain) == ([], 0)
    site_mask, outer = torch.tensor([True, True]), torch.tensor([[True], [False]])
    inner = torch.ones(3, 4, dtype=torch.bool)
    inner[0, 0] = False
    fn = dist.Normal(torch.zeros(2, 3, 4), 1.0).mask(inner).to_event(1)
    fn = fn.expand([2, 3]).mask(outer).to_event(1)  # batch [2], event [3, 4]
    site = {"fn": fn, "mask": site_mask, "value": torch.zeros(2, 3, 4)}
    masks, event = site_masks(site)
    wanted = (site_mask, outer, inner)
    assert [d for _, d in masks] == [2, 1, 0]  # outside in; dims: the .to_event dims inside
    assert all(torch.equal(m, w.expand(m.shape)) for (m, _), w in zip(masks, wanted, strict=True))
    on, event = counted_elements(site)
    expected = torch.stack([inner, torch.zeros(3, 4, dtype=torch.bool)])  # row 1 off
    assert event == 0 and torch.equal(on.expand(2, 3, 4), expected)


def test_a_mask_inside_a_transformed_distribution_is_read():
    """Tester AL: TransformedDistribution(Normal(0, 1).mask(m), [exp]) was read as
    unmasked, so a guide scoring its masked-off elements passed every check (an ELBO 2.1
    nats above log p(x) = 0). Its masks are read through the transform, LogNormal's too."""
    from pyro.distributions.transforms import ExpTransform

    m = torch.tensor([True, False, False])
    fn = dist.TransformedDistribution(dist.Normal(torch.zeros(3), 1.0).mask(m), [ExpTransform()])
    for site_fn in (fn, dist.LogNormal(torch.zeros(3), 1.0).mask(m)):
        on, event = counted_elements({"fn": site_fn, "mask": None, "value": torch.ones(3)})
        assert event == 0 and torch.equal(on, m)


def test_a_half_cauchy_whose_base_is_a_plain_torch_distribution_is_read():
    """Tester AP: Pyro's HalfCauchy is torch's, whose base Cauchy is a plain torch
    distribution without Pyro's event_dim; reading its masks raised AttributeError, so
    ConditionalCAVIGuide(model, ["sigma"]) with a HalfCauchy sigma crashed. Its event dims
    are read from the event shape: none, and its mask where it has one."""
    m = torch.tensor([True, False, True])
    for site_fn, expected in [
        (dist.HalfCauchy(torch.ones(3)), torch.tensor(True)),
        (dist.HalfCauchy(torch.ones(3)).mask(m), m),
        (dist.HalfCauchy(torch.ones(3)).to_event(1), torch.tensor(True)),
    ]:
        on, event = counted_elements({"fn": site_fn, "mask": None, "value": torch.ones(3)})
        assert torch.equal(on, expected) and event == 0  # the innermost's event dims


def test_without_masks_takes_off_every_mask_and_keeps_the_draws_density():
    """The density a draw came from, under ``.mask`` at any depth (inside ``.to_event``,
    ``expand`` and a transformed distribution): its log-density is the unmasked one,
    computed here from the bare distribution (tester DS: a ``.mask`` had zeroed the
    REINFORCE score of the elements it masks)."""
    loc, scale = torch.tensor([[0.3, -1.0], [2.0, 0.5]]), torch.tensor([0.7, 1.3])
    value = torch.tensor([[0.1, 0.4], [1.5, -0.2]])
    mask = torch.tensor([[True, False], [False, True]])
    bare = dist.Normal(loc, scale)
    wrapped = [
        bare.mask(mask),
        bare.mask(mask).to_event(1),
        bare.to_event(1).mask(torch.tensor([True, False])),
        dist.Normal(loc[0], scale).mask(mask[0]).expand([2, 2]).to_event(1),
    ]
    expected = [bare.log_prob(value), *[bare.log_prob(value).sum(-1)] * 2]
    expected.append(dist.Normal(loc[0], scale).log_prob(value).sum(-1))
    for fn, wanted in zip(wrapped, expected, strict=True):
        assert torch.allclose(without_masks(fn).log_prob(value), wanted)
    lognormal = dist.TransformedDistribution(bare.mask(mask), [dist.transforms.ExpTransform()])
    positive = value.exp()
    jacobian = value  # log |d exp(x)/dx| = x
    assert torch.allclose(
        without_masks(lognormal).log_prob(positive), bare.log_prob(value) - jacobian
    )
    assert without_masks(bare) is bare and without_masks(bare.to_event(1)).base_dist is bare


def test_a_drawn_site_s_sampling_density_is_unmasked_and_an_observed_one_kept():
    fn = dist.Normal(torch.zeros(3), 1.0).mask(torch.tensor([True, False, True]))
    value = torch.tensor([0.5, -1.0, 2.0])
    site = {"fn": fn, "value": value, "is_observed": False, "unscaled_log_prob": fn.log_prob(value)}
    assert torch.allclose(sampling_log_prob(site), dist.Normal(0.0, 1.0).log_prob(value))
    assert torch.equal(sampling_log_prob({**site, "is_observed": True}), fn.log_prob(value))
    stacked = torch.tensor([[1.0, 2.0, 3.0]])  # a stacked trace's per-particle values
    assert sampling_log_prob({**site, "sampling_log_prob": stacked}) is stacked


def test_a_batch_element_counts_where_any_of_its_coordinates_does():
    inner = torch.tensor([[True, False], [False, False], [False, True]])
    fn = dist.Normal(torch.zeros(3, 2), 1.0).mask(inner).to_event(1)
    site = {"fn": fn, "mask": None, "value": torch.zeros(3, 2)}
    assert torch.equal(counted_batch_elements(site), torch.tensor([True, False, True]))
    outer = {**site, "fn": dist.Normal(torch.zeros(3, 2), 1.0).to_event(1)}
    assert counted_batch_elements(outer) is None  # no mask: no tensor made
    keep = torch.tensor([False, True, True])
    assert torch.equal(counted_batch_elements({**outer, "mask": keep}), keep)


def test_a_mask_inside_the_event_is_told_from_one_covering_whole_elements():
    loc = torch.zeros(3, 2)
    value = torch.zeros(3, 2)
    inner = torch.tensor([[True, False], [True, True], [False, True]])

    def site(fn, mask=None):
        return {"fn": fn, "mask": mask, "value": value}

    assert masks_inside_event(site(dist.Normal(loc, 1.0).mask(inner).to_event(1)))
    whole = torch.tensor([[True], [False], [True]])  # size 1 along the event: whole
    assert not masks_inside_event(site(dist.Normal(loc, 1.0).mask(whole).to_event(1)))
    outside = dist.Normal(loc, 1.0).to_event(1).mask(torch.tensor([True, False, True]))
    assert not masks_inside_event(site(outside))
    assert not masks_inside_event(site(dist.Normal(loc, 1.0).to_event(1), inner[:, 0]))
    assert not masks_inside_event(site(dist.Normal(loc, 1.0).mask(False).to_event(1)))
