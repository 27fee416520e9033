"""The shared encoder: the modules one builds by hand from encoder_trunk and two linear
heads, weight for weight under the same seed, under the names run folders store."""

import pytest
import torch
from torch import nn

from pyro_vae.convnets import encoder_trunk
from pyro_vae.guides import AmortizedIAF, AmortizedLowRankNormal, AmortizedNormal
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
