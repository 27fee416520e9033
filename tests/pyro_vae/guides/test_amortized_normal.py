import pyro.poutine as poutine
import torch

from pyro_vae.guides import AmortizedNormal


def test_encode_is_a_diagonal_normal_per_row():
    guide = AmortizedNormal(6, 3, (8, 5))
    q = guide.encode(torch.rand(4, 6))
    assert q.batch_shape == (4, 3) and (q.scale > 0).all()


def test_samples_are_reparameterized_and_scaled_by_the_data_plate():
    guide = AmortizedNormal(6, 3, (8,))
    x = torch.rand(4, 6)
    trace = poutine.trace(guide).get_trace(x, num_data=40)
    site = trace.nodes["z"]
    assert site["value"].shape == (4, 3) and site["fn"].has_rsample
    assert site["scale"] == 10.0
    site["value"].sum().backward()
    assert guide.loc_head.weight.grad is not None and guide.log_scale_head.weight.grad is not None


def test_a_conv_encoder_is_a_convolutional_trunk_then_the_same_heads():
    guide = AmortizedNormal(64, 3, (8,), arch="conv", image_shape=(8, 8), channels=(2, 4))
    x = torch.rand(5, 64)
    q = guide.encode(x)
    assert q.batch_shape == (5, 3) and guide.loc_head.in_features == 8
    convs = [m for m in guide.trunk.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [2, 4]
    torch.testing.assert_close(q.loc, guide.loc_head(guide.trunk(x.reshape(5, 1, 8, 8))))
