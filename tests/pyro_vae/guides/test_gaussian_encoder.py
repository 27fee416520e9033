"""The shared encoder: the modules one builds by hand from encoder_trunk and two linear
heads, weight for weight under the same seed, under the names run folders store."""

import pytest
import torch
from torch import nn

from pyro_vae.convnets import encoder_trunk
from pyro_vae.guides import (
    AmortizedIAF,
    AmortizedLowRankNormal,
    AmortizedNormal,
    AmortizedSplineFlow,
)
from pyro_vae.guides.gaussian_encoder import add_gaussian_encoder


@pytest.mark.parametrize(
    "arch, options", [("mlp", {}), ("conv", {"image_shape": (8, 8), "channels": (4, 8)})]
)
def test_the_encoder_is_the_trunk_and_two_heads_built_by_hand(arch, options):
    torch.manual_seed(0)
    guide = nn.Module()
    width = add_gaussian_encoder(guide, 64, 3, "z", (16,), "softplus", arch, **options)
    torch.manual_seed(0)
    trunk, hand_width = encoder_trunk(
        64, (16,), "softplus", arch, options.get("image_shape"), options.get("channels")
    )
    loc, log_scale = nn.Linear(hand_width, 3), nn.Linear(hand_width, 3)
    assert width == hand_width and (guide.x_dim, guide.latent_dim, guide.site) == (64, 3, "z")
    by_hand = {
        **{f"trunk.{k}": v for k, v in trunk.state_dict().items()},
        **{f"loc_head.{k}": v for k, v in loc.state_dict().items()},
        **{f"log_scale_head.{k}": v for k, v in log_scale.state_dict().items()},
    }
    ours = guide.state_dict()
    assert list(ours) == list(by_hand)
    assert all(torch.equal(ours[k], by_hand[k]) for k in ours)


@pytest.mark.parametrize("guide_class", [AmortizedNormal, AmortizedLowRankNormal, AmortizedIAF])
def test_every_amortized_gaussian_guide_stores_the_shared_names(guide_class):
    names = set(guide_class(6, 2, (4,)).state_dict())
    assert {"loc_head.weight", "log_scale_head.weight", "trunk.0.weight"} <= names


@pytest.mark.parametrize(
    "guide_class", [AmortizedNormal, AmortizedLowRankNormal, AmortizedIAF, AmortizedSplineFlow]
)
@pytest.mark.parametrize(
    "sizes, refusal",
    [((64, 0), "latent_dim: 0 is not a positive integer"),
     ((64, 2.5), "latent_dim: 2.5 is not a positive integer"),
     ((0, 2), "x_dim: 0 is not a positive integer")],
)  # fmt: skip
def test_every_amortized_gaussian_guide_refuses_sizes_by_name(guide_class, sizes, refusal):
    """Tester FI: ``latent_dim=0`` built AmortizedNormal and AmortizedLowRankNormal guides
    that drew an empty z, and the flows blamed ``flow_hidden_dims: 0``, never given (its
    default is 10·latent_dim); 2.5 failed in torch's ``empty()``."""
    with pytest.raises(ValueError, match=f"^{refusal}"):
        guide_class(*sizes, hidden_dims=(16,))


@pytest.mark.parametrize(
    "guide_class", [AmortizedNormal, AmortizedLowRankNormal, AmortizedIAF, AmortizedSplineFlow]
)
@pytest.mark.parametrize(
    "options", [{}, {"arch": "conv", "image_shape": (8, 8), "channels": (4,)}], ids=["mlp", "conv"]
)
def test_one_integer_width_is_the_one_layer_list_the_models_take(guide_class, options):
    """Tester FL: ``--guide-opt hidden_dims=16`` failed as "object of type 'int' has no
    len()", blamed on the guide's construction, where the models (``layer_widths``) take
    16 as one layer of 16; the flows' ``flow_hidden_dims`` likewise. The expected modules
    are those the one-element lists build under the same seed."""
    flows = {"flow_hidden_dims": 12} if guide_class in (AmortizedIAF, AmortizedSplineFlow) else {}
    torch.manual_seed(0)
    ours = guide_class(64, 3, hidden_dims=16, **flows, **options).state_dict()
    listed = {k: [v] for k, v in flows.items()}
    torch.manual_seed(0)
    by_list = guide_class(64, 3, hidden_dims=[16], **listed, **options).state_dict()
    assert list(ours) == list(by_list)
    assert all(torch.equal(ours[k], by_list[k]) for k in ours)
    assert ours["loc_head.weight"].shape == (3, 16)


@pytest.mark.parametrize("bad", ["16", 0, 1.5, {"a": 1}])
def test_widths_that_are_no_layer_widths_are_refused_by_name(bad):
    with pytest.raises(ValueError, match="^hidden_dims: "):
        AmortizedNormal(64, 3, hidden_dims=bad)
