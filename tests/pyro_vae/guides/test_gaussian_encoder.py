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
